"""fastattn.transformers.use(model): generate_batch (continuous batching, paged cache) and
generate through fastattn on tiny random-weight models (a Llama-like with GQA, a
Qwen2-like with sliding windows, a Gemma2-like with soft-cap, a GptOss-like with sinks),
each served token checked against eager attention's teacher-forced logits (random models
have near-ties: a token passes when its eager logit is within a small tolerance of the
best one)."""

import pytest
import torch

transformers = pytest.importorskip("transformers")
if not hasattr(transformers, "ContinuousBatchingConfig"):
    pytest.skip("this transformers has no continuous batching config", allow_module_level=True)

import fastattn.transformers  # noqa: E402

PROMPTS = [[5, 17, 33], [7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 40, 41, 42], [90], [21, 22, 23, 24, 25, 26, 27]]
NEW_TOKENS = 6


from tiny_models import MODELS  # noqa: E402





@pytest.fixture(scope="module", params=sorted(MODELS))
def pair(request):
    """(name, eager model, fastattn model): the same random weights."""
    torch.manual_seed(70)
    eager = MODELS[request.param]().eval()
    eager.set_attn_implementation("eager")
    ours = MODELS[request.param]().eval()
    ours.load_state_dict(eager.state_dict())
    fastattn.transformers.use(ours)
    return request.param, eager, ours


def check_served(eager, prompt, served, tol, case):
    """Each served token against eager's teacher-forced logits of prompt + served."""
    ids = torch.tensor([list(prompt) + list(served)])
    with torch.no_grad():
        logits = eager(input_ids=ids).logits[0].float()
    for t, tok in enumerate(served):
        row = logits[len(prompt) - 1 + t]
        gap = (row.max() - row[tok]).item()
        assert gap <= tol, f"{case}: token {t} ({tok}) is {gap:.3g} below eager's best {row.argmax().item()}"


def cb_config(**kw):
    # A tiny cache and small batches: prefills are chunked and mixed with decodes.
    base = dict(num_blocks=64, max_batch_tokens=8, page_size=4)
    base.update(kw)
    return transformers.ContinuousBatchingConfig(**base)


def probe(calls):
    """Wraps the fastattn paged forward to record which path each call took."""
    inner = fastattn.transformers._paged_forward

    def wrapped(module, query, key, value, scaling, causal, kwargs):
        if kwargs.get("block_table") is not None:
            calls.append("block_table")
        elif kwargs.get(fastattn.transformers._PAGES) is not None:
            calls.append("pages")
        else:
            calls.append("packed")
        return inner(module, query, key, value, scaling, causal, kwargs)

    return wrapped


def test_generate_batch_serves_eager_tokens(pair, monkeypatch):
    name, eager, ours = pair
    calls = []
    monkeypatch.setattr(fastattn.transformers, "_paged_forward", probe(calls))
    gc = transformers.GenerationConfig(max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=-1, pad_token_id=0)
    with torch.no_grad():
        out = ours.generate_batch(PROMPTS, generation_config=gc, continuous_batching_config=cb_config())
    assert ours.config._attn_implementation == "fastattn"
    assert calls, "the fastattn paged forward was not called"
    if name == "llama":  # full attention only: every read of the cache is in place
        assert {"block_table", "pages", "packed"} == set(calls), set(calls)
    else:  # sliding layers: no decode fast path, gathered K/V; full layers read in place
        assert "block_table" not in calls and "packed" in calls, set(calls)
        if name == "gptoss":
            assert "pages" in calls, set(calls)
    assert len(out) == len(PROMPTS)
    for i, prompt in enumerate(PROMPTS):
        res = out[f"req_{i}"]
        assert len(res.generated_tokens) == NEW_TOKENS, res
        check_served(eager, prompt, res.generated_tokens, 1e-4, f"{name} generate_batch req {i}")


def test_generate_with_use_matches_eager(pair):
    name, eager, ours = pair
    for i, prompt in enumerate(PROMPTS[:2]):
        ids = torch.tensor([prompt])
        kw = dict(max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0, eos_token_id=-1)
        got = ours.generate(input_ids=ids, **kw)[0, len(prompt):].tolist()
        check_served(eager, prompt, got, 1e-4, f"{name} generate req {i}")
        want = eager.generate(input_ids=ids, **kw)[0, len(prompt):].tolist()
        # Equal unless a near-tie flipped a token (checked above against eager's logits).
        assert got[:2] == want[:2], f"{name} generate req {i}: {got} vs eager {want}"


@pytest.mark.parametrize("name", ["llama", "gptoss"])
def test_bf16_generate_batch(name, monkeypatch):
    torch.manual_seed(71)
    eager = MODELS[name]().eval()
    eager.set_attn_implementation("eager")
    ours = MODELS[name]().eval()
    ours.load_state_dict(eager.state_dict())
    ours = ours.to(torch.bfloat16)
    fastattn.transformers.use(ours)
    calls = []
    monkeypatch.setattr(fastattn.transformers, "_paged_forward", probe(calls))
    gc = transformers.GenerationConfig(max_new_tokens=4, do_sample=False, eos_token_id=-1, pad_token_id=0)
    with torch.no_grad():
        out = ours.generate_batch(PROMPTS, generation_config=gc, continuous_batching_config=cb_config())
    if name == "llama":  # bf16 pages read in place
        assert "block_table" in calls, set(calls)
    for i, prompt in enumerate(PROMPTS):
        # bf16 weights and activations: a looser gap against the f32 eager model.
        check_served(eager, prompt, out[f"req_{i}"].generated_tokens, 0.15, f"{name} bf16 req {i}")


def test_sinks_in_the_standard_path_match_eager():
    torch.manual_seed(72)
    eager = MODELS["gptoss"]().eval()
    eager.set_attn_implementation("eager")
    ours = MODELS["gptoss"]().eval()
    ours.load_state_dict(eager.state_dict())
    fastattn.transformers.use(ours)
    gen = torch.Generator().manual_seed(73)
    ids = torch.randint(3, 96, (2, 11), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    with torch.no_grad():
        a = eager(input_ids=ids, attention_mask=mask).logits
        b = ours(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    assert (b[real] - a[real]).abs().max().item() < 1e-4
    # With grad enabled: sinks are differentiable.
    loss = ours(input_ids=ids[:1], labels=ids[:1]).loss
    loss.backward()
    ref = eager(input_ids=ids[:1], labels=ids[:1]).loss
    ref.backward()
    for (n, p), (_, q) in zip(ours.named_parameters(), eager.named_parameters()):
        if "sinks" in n:
            assert (p.grad - q.grad).abs().max().item() < 1e-4, n
