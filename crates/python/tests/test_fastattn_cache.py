"""fastattn.transformers.use(model) with FastattnCache (issue 33): generate through a
cache that appends in place, on tiny random-weight models (Llama-like with GQA, Qwen2-like
with sliding windows, Gemma2-like with soft-cap, GptOss-like with sinks), against eager
attention with transformers' DynamicCache: greedy tokens and logits, beam search, crop and
continue, left-padded batches, bf16 models and a bf16 cache under an f32 model; the
buffers never move between growths; bad input is refused."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

import fastattn.transformers  # noqa: E402
from fastattn.cache import FastattnCache, FastattnLayer  # noqa: E402
from fastattn.transformers import _CACHE_KW  # noqa: E402
from tiny_models import MODELS, small  # noqa: E402

PROMPT = [5, 17, 33, 40, 41, 9, 12, 80]
NEW = 12





def pair(name, dtype=torch.float32, cache_dtype=None):
    torch.manual_seed(33)
    eager = MODELS[name]().eval().to(dtype)
    eager.set_attn_implementation("eager")
    ours = MODELS[name]().eval().to(dtype)
    ours.load_state_dict(eager.state_dict())
    fastattn.transformers.use(ours, cache_dtype=cache_dtype)
    return eager, ours


def gen(model, ids, **kw):
    with torch.no_grad():
        return model.generate(
            ids, max_new_tokens=NEW, do_sample=False, eos_token_id=None,
            output_logits=True, return_dict_in_generate=True, **kw,
        )


def used_cache(out):
    return out[_CACHE_KW] if _CACHE_KW in out else out.past_key_values


@pytest.mark.parametrize("name", sorted(MODELS))
def test_greedy_tokens_and_logits_match_eager_with_dynamic_cache(name):
    eager, ours = pair(name)
    ids = torch.tensor([PROMPT])
    a, b = gen(eager, ids), gen(ours, ids)
    cache = used_cache(b)
    assert isinstance(cache, FastattnCache)
    # Sized for the call (prompt + max_new_tokens, at least one chunk): it never grew.
    full = [layer for layer in cache.layers if not getattr(layer, "is_sliding", False)]
    assert all(layer.capacity == max(256, len(PROMPT) + NEW) for layer in full)
    assert b.sequences.tolist() == a.sequences.tolist()
    err = max((x - y).abs().max().item() for x, y in zip(a.logits, b.logits))
    assert err < 1e-4, err


@pytest.mark.parametrize("name", ["llama", "qwen2", "gptoss"])
def test_small_growth_steps_and_window_moves_give_the_same_tokens(name):
    # chunk=4: the full layers grow several times, the sliding layers move their window.
    eager, ours = pair(name)
    ids = torch.tensor([PROMPT])
    a = gen(eager, ids)
    b = gen(ours, ids, **{_CACHE_KW: FastattnCache(ours.config, chunk=4)})
    assert b.sequences.tolist() == a.sequences.tolist()
    err = max((x - y).abs().max().item() for x, y in zip(a.logits, b.logits))
    assert err < 1e-4, err


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_beam_search_matches(name):
    eager, ours = pair(name)
    ids = torch.tensor([PROMPT])
    with torch.no_grad():
        a = eager.generate(ids, max_new_tokens=8, num_beams=3, do_sample=False, eos_token_id=None)
        b = ours.generate(ids, max_new_tokens=8, num_beams=3, do_sample=False, eos_token_id=None)
    assert b.tolist() == a.tolist()


@pytest.mark.parametrize("name", ["llama", "gptoss"])
def test_crop_then_continue(name):
    eager, ours = pair(name)
    ids = torch.tensor([PROMPT])
    caches = [transformers.DynamicCache(config=eager.config), FastattnCache(ours.config)]
    logits = []
    for model, cache in zip((eager, ours), caches):
        # transformers' sliding layers can be cropped only while recording their past.
        cache.activate_past_recording()
        with torch.no_grad():
            model(input_ids=ids, **{_CACHE_KW: cache}, use_cache=True)
            cache.crop(-3)
            assert cache.get_seq_length() == len(PROMPT) - 3
            tail = torch.tensor([[7, 8, 9, 10]])
            out = model(input_ids=tail, **{_CACHE_KW: cache}, use_cache=True)
        logits.append(out.logits)
    assert (logits[0] - logits[1]).abs().max().item() < 1e-4


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_left_padded_batch(name):
    eager, ours = pair(name)
    ids = torch.tensor([[0, 0, 0] + PROMPT[:5], PROMPT])
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1], [1] * 8])
    a, b = gen(eager, ids, attention_mask=mask), gen(ours, ids, attention_mask=mask)
    assert b.sequences.tolist() == a.sequences.tolist()
    err = max((x - y).abs().max().item() for x, y in zip(a.logits, b.logits))
    assert err < 1e-4, err


def test_bf16_model_and_bf16_cache_under_an_f32_model():
    # A bf16 model: logits close to eager bf16's (rounding differs), the cache bf16.
    eager, ours = pair("llama", dtype=torch.bfloat16)
    ids = torch.tensor([PROMPT])
    a = gen(eager, ids)
    b = gen(ours, ids)
    assert used_cache(b).layers[0]._k.dtype == torch.bfloat16
    assert (a.logits[0].float() - b.logits[0].float()).abs().max().item() < 5e-2
    # A bf16 cache under an f32 model: half the bytes, logits close to eager f32's on the
    # first steps (later tokens may part at near-ties).
    eager, ours = pair("llama", cache_dtype=torch.bfloat16)
    a, b = gen(eager, ids), gen(ours, ids)
    cache = used_cache(b)
    assert cache.layers[0]._k.dtype == torch.bfloat16
    f32 = FastattnCache(ours.config)
    with torch.no_grad():
        ours(input_ids=ids, **{_CACHE_KW: f32}, use_cache=True)
    assert 2 * cache.nbytes() == f32.nbytes()
    assert (a.logits[0] - b.logits[0]).abs().max().item() < 2e-2


def test_the_buffers_never_move_between_growths():
    eager, ours = pair("llama")
    cache = FastattnCache(ours.config, chunk=64)
    ids = torch.tensor([PROMPT])
    with torch.no_grad():
        out = ours(input_ids=ids, **{_CACHE_KW: cache}, use_cache=True)
        layer = cache.layers[0]
        ptrs = (layer._k.data_ptr(), layer._v.data_ptr())
        for _ in range(40):
            nxt = out.logits[:, -1:].argmax(-1)
            out = ours(input_ids=nxt, **{_CACHE_KW: cache}, use_cache=True)
            # Every step hands out views of the same storage: nothing was copied.
            assert (layer._k.data_ptr(), layer._v.data_ptr()) == ptrs
            assert layer.keys.data_ptr() == ptrs[0]
    assert cache.get_seq_length() == len(PROMPT) + 40 <= layer.capacity == 64


def test_bad_input_is_refused():
    eager, ours = pair("llama")
    with pytest.raises(TypeError):
        FastattnCache(ours.config, cache_dtype=torch.int32)
    with pytest.raises(TypeError):
        fastattn.transformers.use(ours, cache_dtype=torch.float64)
    # A cache built for a model with fewer layers.
    one = small(transformers.LlamaConfig, num_hidden_layers=1)
    with pytest.raises(ValueError, match="layers"):
        with torch.no_grad():
            ours(input_ids=torch.tensor([PROMPT]), **{_CACHE_KW: FastattnCache(one)}, use_cache=True)
    # A batch size that changes without batch_select_indices.
    cache = FastattnCache(ours.config)
    with torch.no_grad():
        ours(input_ids=torch.tensor([PROMPT]), **{_CACHE_KW: cache}, use_cache=True)
        with pytest.raises(ValueError, match="batch"):
            ours(input_ids=torch.tensor([[3], [4]]), **{_CACHE_KW: cache}, use_cache=True)
    layer = FastattnLayer()
    with pytest.raises(ValueError):
        layer.crop(2)


@pytest.mark.parametrize("dtype", [torch.int8, torch.float8_e4m3fn, torch.float8_e5m2])
def test_8bit_caches_generate_close_to_eager(dtype):
    # int8 / fp8 codes with a scale per token and head: greedy tokens of the tiny model equal
    # eager's (its logits are well separated at this size), logits within the format's error.
    eager, ours = pair("llama", cache_dtype=dtype)
    ids = torch.tensor([PROMPT])
    calls = []
    attend = FastattnLayer.attend
    FastattnLayer.attend = lambda self, *a, **kw: calls.append(1) or attend(self, *a, **kw)
    try:
        a, b = gen(eager, ids), gen(ours, ids)
    finally:
        FastattnLayer.attend = attend
    # Prefill and every decode step of every layer read the codes in place.
    assert len(calls) == NEW * ours.config.num_hidden_layers
    cache = used_cache(b)
    layer = cache.layers[0]
    assert layer._k.dtype == dtype and layer.keys._fastattn_scale.shape == layer.keys.shape[:3]
    # The codes times their scales hold the appended rows (quantised in Rust, per row).
    x = torch.randn(2, 2, 3, 16)
    fresh = FastattnLayer(cache_dtype=dtype)
    fresh.update(x, -x)
    top = 127.0 if dtype == torch.int8 else torch.finfo(dtype).max
    assert torch.allclose(fresh.keys._fastattn_scale, x.abs().amax(-1) / top)
    back = fresh.keys.float() * fresh.keys._fastattn_scale[..., None]
    rel = {torch.int8: 0.5 / 127, torch.float8_e4m3fn: 2**-4, torch.float8_e5m2: 2**-3}[dtype]
    assert ((back - x).abs() <= rel * x.abs().amax(-1, keepdim=True) + 1e-6).all()
    assert b.sequences.tolist() == a.sequences.tolist()
    tol = {torch.int8: 1e-2, torch.float8_e4m3fn: 3e-2, torch.float8_e5m2: 6e-2}[dtype]
    err = max((x - y).abs().max().item() for x, y in zip(a.logits, b.logits))
    assert err < tol, err
    # A left-padded batch goes through the masked (dequantising) path.
    batch = torch.tensor([[0, 0, 0] + PROMPT[:5], PROMPT])
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1], [1] * 8])
    a, b = gen(eager, batch, attention_mask=mask), gen(ours, batch, attention_mask=mask)
    err = max((x - y).abs().max().item() for x, y in zip(a.logits, b.logits))
    assert err < tol, err


def test_8bit_cache_bytes_and_refusals():
    eager, ours = pair("llama")
    ids = torch.tensor([PROMPT])
    sizes = {}
    for dtype in (torch.float32, torch.int8):
        cache = FastattnCache(ours.config, cache_dtype=dtype, capacity=64)
        with torch.no_grad():
            ours(input_ids=ids, **{_CACHE_KW: cache}, use_cache=True)
        sizes[dtype] = cache.nbytes()
    # Codes a quarter of f32, plus one f32 scale per row (D = 16 here: 1/4 + 1/16).
    assert sizes[torch.int8] * 16 == sizes[torch.float32] * 5
    # No sliding-window layers in 8-bit yet.
    with pytest.raises(ValueError, match="sliding"):
        FastattnCache(MODELS["qwen2"]().config, cache_dtype=torch.int8)
    # 8-bit keys without scales (not from a FastattnCache).
    q = torch.randn(1, 4, 1, 16)
    k = torch.zeros(1, 2, 5, 16, dtype=torch.int8)
    with pytest.raises(ValueError, match="scales"):
        fastattn.transformers.attention_forward(ours.model.layers[0].self_attn, q, k, k, None)
