"""``python -m fastattn.bench --e2e``: what a transformers user sees end to end.

A random-weight Llama-shaped model (``--e2e-model LAYERSxHEADSxKVHEADSxHEADDIM``, default
6x16x4x64: d_model 1024) generates greedily from a ``--prompt-len`` token prompt, three
ways, timed in turns in this one process (a change in the machine's speed hits all):

* ``sdpa+dynamic``: ``attn_implementation="sdpa"`` with transformers' ``DynamicCache``
  (its default: every layer ``torch.cat``s its whole history at every step);
* ``sdpa+static``: the same with ``cache_implementation="static"`` (preallocated);
* ``fastattn``: :func:`fastattn.transformers.use` with a
  :class:`fastattn.cache.FastattnCache` stored as ``--cache-dtype`` (default the model's;
  several dtypes give one row each, ``fastattn[bf16]``, ``fastattn[i8]``, ...).

Each round runs ``generate`` once per implementation with ``--new-tokens`` tokens; a logits
processor stamps the time at every step, so the prefill is the time to the first stamp
and decode per token the median interval between the later stamps (a difference of two
``generate`` times would carry the prefill's noise into it). The table gives medians over
``--rounds`` rounds, the per-round decode ratios against ``sdpa+dynamic`` (median,
min–max), and each cache's bytes after the run.
"""

import copy
import statistics
import time

import torch

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
# fastattn's cache may also be 8-bit.
CACHE_DTYPES = dict(DTYPES, i8=torch.int8, f8e4m3=torch.float8_e4m3fn, f8e5m2=torch.float8_e5m2)


def build(args):
    import transformers

    layers, heads, kv_heads, head_dim = (int(x) for x in args.e2e_model.split("x"))
    cfg = transformers.LlamaConfig(
        vocab_size=1024,
        hidden_size=heads * head_dim,
        intermediate_size=2 * heads * head_dim,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        max_position_embeddings=args.prompt_len + args.new_tokens + 16,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    dtype = DTYPES[args.dtype]
    torch.manual_seed(0)
    base = transformers.LlamaForCausalLM(copy.deepcopy(cfg)).eval().to(dtype)
    base.set_attn_implementation("sdpa")
    import fastattn.transformers

    ours = {}
    for name in args.cache_dtype or [None]:
        m = transformers.LlamaForCausalLM(copy.deepcopy(cfg)).eval().to(dtype)
        m.load_state_dict(base.state_dict())
        fastattn.transformers.use(m, cache_dtype=CACHE_DTYPES[name] if name else None)
        ours["fastattn" if name is None else f"fastattn[{name}]"] = m
    return base, ours


def cache_bytes(out):
    """Bytes of the keys and values a ``generate`` result's cache holds."""
    from fastattn.transformers import _CACHE_KW

    cache = out[_CACHE_KW] if _CACHE_KW in out else out.past_key_values
    if hasattr(cache, "nbytes"):
        return cache.nbytes()
    total = 0
    for layer in cache.layers:
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, torch.Tensor):
                total += t.nbytes
    return total


def run(args):
    base, ours = build(args)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 1024, (1, args.prompt_len), generator=gen)
    impls = {
        "sdpa+dynamic": (base, {}),
        "sdpa+static": (base, {"cache_implementation": "static"}),
    }
    impls.update({name: (m, {}) for name, m in ours.items()})

    import transformers

    class Stamps(transformers.LogitsProcessor):
        """Records the time of every generation step."""

        def __init__(self):
            self.times = []

        def __call__(self, input_ids, scores):
            self.times.append(time.perf_counter())
            return scores

    def generate(name, n):
        """``(prefill s, decode s per token, total s, result)``."""
        model, kw = impls[name]
        stamps = Stamps()
        t0 = time.perf_counter()
        out = model.generate(
            ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None,
            return_dict_in_generate=True, logits_processor=[stamps], **kw,
        )
        total = time.perf_counter() - t0
        st = stamps.times
        steps = [b - a for a, b in zip(st, st[1:])]
        return st[0] - t0, statistics.median(steps) if steps else float("nan"), total, out

    print(
        f"end to end: Llama-shaped random model {args.e2e_model} (layers x heads x kv heads x "
        f"head dim), {args.dtype}, cache {'/'.join(args.cache_dtype or [args.dtype])} for fastattn; prompt "
        f"{args.prompt_len}, {args.new_tokens} new tokens; {torch.get_num_threads()} threads, "
        f"{args.rounds} rounds"
    )
    res = {name: {"prefill": [], "decode": [], "tps": []} for name in impls}
    nbytes = {}
    with torch.no_grad():
        for name in impls:  # warm-up
            generate(name, 2)
        for _ in range(args.rounds):
            for name in impls:
                prefill, decode, total, out = generate(name, args.new_tokens)
                res[name]["prefill"].append(prefill)
                res[name]["decode"].append(decode)
                res[name]["tps"].append(args.new_tokens / total)
                nbytes[name] = cache_bytes(out)
    med = statistics.median
    print(
        f"{'impl':<18} {'prefill ms':>11} {'decode ms/token':>16} {'tokens/s':>9} "
        f"{'decode speed-up vs sdpa+dynamic (min-max)':>42} {'cache MiB':>10}"
    )
    ref = res["sdpa+dynamic"]["decode"]
    for name, r in res.items():
        ratios = [a / b for a, b in zip(ref, r["decode"])]
        print(
            f"{name:<18} {med(r['prefill']) * 1e3:>11.1f} {med(r['decode']) * 1e3:>16.2f} "
            f"{med(r['tps']):>9.1f} {med(ratios):>30.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) "
            f"{nbytes[name] / 2**20:>10.3f}"
        )


def add_arguments(p):
    g = p.add_argument_group("--e2e")
    g.add_argument("--e2e", action="store_true", help="time generate end to end (transformers)")
    g.add_argument("--e2e-model", default="6x16x4x64", help="LAYERSxHEADSxKVHEADSxHEADDIM")
    g.add_argument("--prompt-len", type=int, default=2048)
    g.add_argument(
        "--cache-dtype", nargs="+", choices=sorted(CACHE_DTYPES), default=None,
        help="fastattn's cache dtype (several: one fastattn row each, e.g. bf16 i8)",
    )
