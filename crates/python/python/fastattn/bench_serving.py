"""``python -m fastattn.bench --serving``: transformers' continuous batching
(``generate_batch``, paged cache) with ``"sdpa"`` against the same model under
``fastattn.transformers.use``, timed alternately in this one process.

The model is a random-weight Llama-shaped model (``--layers``, ``--hidden``, ``--heads``,
``--kv-heads``, ``--head-dim``: small, so that attention is a real share of a step); the
requests are ``--requests`` prompts of lengths spread evenly over ``--min-prompt`` ..
``--max-prompt`` tokens, each generating ``--new-tokens`` tokens greedily. A round serves the
whole batch once with each implementation (sdpa, fastattn, in turns); the table shows the
median tokens/s (generated tokens over wall time) and the median, min and max of the
per-round ratio fastattn/sdpa.
"""

import copy
import statistics
import time

import torch


def build(args, dtype):
    import transformers

    cfg = transformers.LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.heads * args.head_dim,
        intermediate_size=2 * args.heads * args.head_dim,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        head_dim=args.head_dim,
        max_position_embeddings=args.max_prompt + args.new_tokens + 16,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    # Each model its own config: the attention implementation is kept in the config.
    base = transformers.LlamaForCausalLM(copy.deepcopy(cfg)).eval().to(dtype)
    base.set_attn_implementation("sdpa")
    ours = transformers.LlamaForCausalLM(copy.deepcopy(cfg)).eval().to(dtype)
    ours.load_state_dict(base.state_dict())
    import fastattn.transformers

    fastattn.transformers.use(ours)
    assert base.config._attn_implementation == "sdpa", base.config._attn_implementation
    return base, ours


def prompts(args):
    gen = torch.Generator().manual_seed(1)
    n = args.requests
    lens = [
        args.min_prompt + (args.max_prompt - args.min_prompt) * i // max(n - 1, 1) for i in range(n)
    ]
    return [torch.randint(3, args.vocab, (length,), generator=gen).tolist() for length in lens]


def serve(model, reqs, args):
    import transformers

    gc = transformers.GenerationConfig(
        max_new_tokens=args.new_tokens, do_sample=False, eos_token_id=-1, pad_token_id=0
    )
    t0 = time.perf_counter()
    out = model.generate_batch(reqs, generation_config=gc)
    dt = time.perf_counter() - t0
    tokens = sum(len(r.generated_tokens) for r in out.values())
    return tokens / dt, out


def run(args):
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    base, ours = build(args, dtype)
    reqs = prompts(args)
    print(
        f"continuous batching, Llama-shaped random model: {args.layers} layers, "
        f"{args.heads}/{args.kv_heads} heads of {args.head_dim}, {args.dtype}; "
        f"{len(reqs)} requests of {min(map(len, reqs))}-{max(map(len, reqs))} prompt tokens, "
        f"{args.new_tokens} new each; {torch.get_num_threads()} threads, {args.rounds} rounds"
    )
    with torch.no_grad():
        # Warm-up (and a check that both serve every request in full).
        for m in (base, ours):
            _, out = serve(m, reqs, args)
            assert all(len(r.generated_tokens) == args.new_tokens for r in out.values())
        sdpa, fast, ratio = [], [], []
        for _ in range(args.rounds):
            a, _ = serve(base, reqs, args)
            b, _ = serve(ours, reqs, args)
            sdpa.append(a)
            fast.append(b)
            ratio.append(b / a)
    med = statistics.median
    print(f"{'impl':<10} {'tokens/s (median)':>18}")
    print(f"{'sdpa':<10} {med(sdpa):>18.1f}")
    print(f"{'fastattn':<10} {med(fast):>18.1f}")
    print(f"ratio fastattn/sdpa: {med(ratio):.2f}x (min {min(ratio):.2f}, max {max(ratio):.2f})")


def add_arguments(p):
    g = p.add_argument_group("--serving")
    g.add_argument("--serving", action="store_true", help="time transformers' continuous batching")
    g.add_argument("--layers", type=int, default=4)
    g.add_argument("--heads", type=int, default=8)
    g.add_argument("--kv-heads", type=int, default=2)
    g.add_argument("--head-dim", type=int, default=64)
    g.add_argument("--vocab", type=int, default=1024)
    g.add_argument("--requests", type=int, default=16)
    g.add_argument("--min-prompt", type=int, default=8)
    g.add_argument("--max-prompt", type=int, default=700)
    g.add_argument("--new-tokens", type=int, default=32)
