"""Tiny random-weight transformers models shared by the transformers tests: a Llama-like
with GQA, a Qwen2-like with sliding windows, a Gemma2-like with soft-cap and a GptOss-like
with sinks (sliding and full layers)."""

import torch
import transformers


def small(cls, **kw):
    base = dict(
        vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    base.update(kw)
    return cls(**base)


def make_llama():
    return transformers.LlamaForCausalLM(small(transformers.LlamaConfig))


def make_qwen2():
    cfg = small(transformers.Qwen2Config, use_sliding_window=True, sliding_window=5, max_window_layers=1)
    return transformers.Qwen2ForCausalLM(cfg)


def make_gemma2():
    cfg = small(
        transformers.Gemma2Config, head_dim=16, sliding_window=5, attn_logit_softcapping=2.0,
        final_logit_softcapping=None, query_pre_attn_scalar=16,
    )
    return transformers.Gemma2ForCausalLM(cfg)


def make_gptoss():
    cfg = small(
        transformers.GptOssConfig, head_dim=16, num_local_experts=4, num_experts_per_tok=2,
        sliding_window=5, layer_types=["sliding_attention", "full_attention"],
    )
    model = transformers.GptOssForCausalLM(cfg)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.sinks.normal_(0.0, 1.0)  # sinks that matter
    return model


MODELS = {"llama": make_llama, "qwen2": make_qwen2, "gemma2": make_gemma2, "gptoss": make_gptoss}
