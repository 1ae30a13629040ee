"""transformers with attn_implementation="fastattn": a small random-weight Llama (GQA)
and a BERT-style encoder against eager attention."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

import fastattn.transformers  # noqa: E402
from conftest import assert_close  # noqa: E402

NAME = fastattn.transformers.register()


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    torch.manual_seed(60)
    cfg = transformers.LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    d = tmp_path_factory.mktemp("llama")
    transformers.LlamaForCausalLM(cfg).eval().save_pretrained(d)
    return d


def load(d, impl, cls=None):
    cls = cls or transformers.AutoModelForCausalLM
    return cls.from_pretrained(d, attn_implementation=impl, dtype=torch.float32).eval()


def left_padded_batch():
    gen = torch.Generator().manual_seed(61)
    ids = torch.randint(3, 96, (3, 12), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    mask[2, :11] = 0  # a single real token
    ids[mask == 0] = 0
    return ids, mask


def test_llama_left_padded_logits_match_eager(llama_dir):
    eager, ours = load(llama_dir, "eager"), load(llama_dir, NAME)
    assert ours.config._attn_implementation == NAME
    ids, mask = left_padded_batch()
    with torch.no_grad():
        a = eager(input_ids=ids, attention_mask=mask).logits
        b = ours(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    assert_close(b[real], a[real], atol=1e-5, case="llama left-padded logits seed 61")


def test_llama_greedy_generation_matches_eager(llama_dir):
    eager, ours = load(llama_dir, "eager"), load(llama_dir, NAME)
    ids, mask = left_padded_batch()
    kw = dict(attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=0)
    a = eager.generate(input_ids=ids, **kw)
    b = ours.generate(input_ids=ids, **kw)
    assert a.tolist() == b.tolist()
    # Unpadded single sequence too (the is_causal path without a mask tensor).
    a = eager.generate(input_ids=ids[:1], max_new_tokens=10, do_sample=False, pad_token_id=0)
    b = ours.generate(input_ids=ids[:1], max_new_tokens=10, do_sample=False, pad_token_id=0)
    assert a.tolist() == b.tolist()


def probe():
    """Registers a recording wrapper of the fastattn forward; returns (name, calls)."""
    seen = []

    def forward(module, query, key, value, attention_mask, **kw):
        seen.append((query.shape[1], key.shape[1], value.shape[1]))
        return fastattn.transformers.attention_forward(module, query, key, value, attention_mask, **kw)

    name = "fastattn_probe"
    transformers.AttentionInterface.register(name, forward)
    transformers.masking_utils.AttentionMaskInterface.register(name, fastattn.transformers.mask_function)
    return name, seen


def test_llama_gqa_runs_on_kv_heads_without_repeating(llama_dir):
    name, seen = probe()
    model = load(llama_dir, name)
    ids, mask = left_padded_batch()
    model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert seen and all(s == (4, 2, 2) for s in seen), seen


def test_llama_forward_with_grad_enabled(llama_dir):
    ours, eager = load(llama_dir, NAME), load(llama_dir, "eager")
    ids, mask = left_padded_batch()
    b = ours(input_ids=ids, attention_mask=mask).logits  # no torch.no_grad()
    with torch.no_grad():
        a = eager(input_ids=ids, attention_mask=mask).logits
    assert_close(b.detach()[mask.bool()], a[mask.bool()], atol=1e-5, case="grad-enabled forward")


def test_bert_padding_mask_matches_eager(tmp_path):
    torch.manual_seed(62)
    cfg = transformers.BertConfig(
        vocab_size=80, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=96, max_position_embeddings=32,
    )
    transformers.BertModel(cfg).eval().save_pretrained(tmp_path)
    eager = load(tmp_path, "eager", transformers.BertModel)
    ours = load(tmp_path, NAME, transformers.BertModel)
    gen = torch.Generator().manual_seed(63)
    ids = torch.randint(1, 80, (3, 10), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 2:] = 0
    with torch.no_grad():
        a = eager(input_ids=ids, attention_mask=mask).last_hidden_state
        b = ours(input_ids=ids, attention_mask=mask).last_hidden_state
    assert_close(b, a, atol=1e-5, case="bert padded seed 63")
    name, seen = probe()
    with torch.no_grad():
        load(tmp_path, name, transformers.BertModel)(input_ids=ids, attention_mask=mask)
    assert len(seen) == 2  # both layers went through fastattn


def param_grads(model, **batch):
    model.zero_grad(set_to_none=True)
    model(**batch).loss.backward()
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def assert_grads_close(ours, eager, case):
    assert ours.keys() == eager.keys(), case
    for n, g in eager.items():
        scale = max(1.0, g.abs().max().item())
        assert_close(ours[n], g, atol=1e-4 * scale, case=f"{case}: {n}")


def test_llama_training_step_grads_match_eager(llama_dir):
    name, seen = probe()
    eager, ours = load(llama_dir, "eager").train(), load(llama_dir, name).train()
    # Unpadded (the is_causal path without a mask tensor).
    gen = torch.Generator().manual_seed(64)
    ids = torch.randint(3, 96, (2, 10), generator=gen)
    assert_grads_close(param_grads(ours, input_ids=ids, labels=ids),
                       param_grads(eager, input_ids=ids, labels=ids), "llama unpadded seed 64")
    assert seen, "the fastattn forward was not called"
    # Left-padded (a bool mask). The loss sees only logits of real tokens, whose attention
    # never reaches a padding key: no label is predicted from a padding position (the rows
    # of padding queries, which see no real key, differ from eager attention's).
    ids, mask = left_padded_batch()
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, 1:][mask[:, :-1] == 0] = -100
    batch = dict(input_ids=ids, attention_mask=mask, labels=labels)
    assert_grads_close(param_grads(ours, **batch), param_grads(eager, **batch), "llama left-padded seed 61")


def test_llama_optimizer_step_runs(llama_dir):
    model = load(llama_dir, NAME).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(65)
    ids = torch.randint(3, 96, (2, 12), generator=gen)
    losses = []
    for _ in range(3):
        opt.zero_grad()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


def test_bert_padded_training_grads_match_eager(tmp_path):
    torch.manual_seed(66)
    cfg = transformers.BertConfig(
        vocab_size=80, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=96, max_position_embeddings=32,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    transformers.BertForMaskedLM(cfg).save_pretrained(tmp_path)
    cls = transformers.BertForMaskedLM
    eager = load(tmp_path, "eager", cls).train()
    ours = load(tmp_path, NAME, cls).train()
    gen = torch.Generator().manual_seed(67)
    ids = torch.randint(1, 80, (3, 10), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    batch = dict(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100))
    assert_grads_close(param_grads(ours, **batch), param_grads(eager, **batch), "bert padded seed 67")
