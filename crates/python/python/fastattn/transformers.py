"""Hugging Face transformers integration: ``attn_implementation="fastattn"``.

::

    import fastattn.transformers
    fastattn.transformers.register()
    model = AutoModelForCausalLM.from_pretrained(name, attn_implementation="fastattn")

:func:`register` adds :func:`attention_forward` to transformers' ``AttentionInterface`` and
transformers' own SDPA mask builder (``masking_utils.sdpa_mask``: a boolean
``[B, 1, Lq, Lk]`` mask, or ``None`` when the mask is plain causal) to its
``AttentionMaskInterface`` under the same name. The forward follows transformers'
``sdpa_attention_forward`` calling convention, with these differences:

* grouped-query attention runs on the key/value heads as they are (no ``repeat_kv``);
* the result is written straight into the ``[B, Lq, H, D]`` layout transformers wants
  (no transpose copy);
* ``softcap`` (Gemma 2) is applied by the kernel;
* dropout and attention sinks (``s_aux``) are refused with a ``ValueError``.

Training works: on hidden states that require grad the attention is differentiable
(the ``fastattn::attention`` op; under ``torch.compile``, the ``fastattn::sdpa`` op), as long as the
model's attention dropout is 0.

Generation with a KV cache works: transformers passes the cached keys and values and the
matching mask; a single query token with no mask attends to every key.
"""

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from ._functions import sdpa_ext

__all__ = ["register", "attention_forward", "mask_function"]


def mask_function(*args, **kwargs):
    """The mask builder registered with ``AttentionMaskInterface``: transformers'
    ``sdpa_mask`` (a bool mask, True = attend, or ``None`` where ``is_causal`` suffices)."""
    return sdpa_mask(*args, **kwargs)


def attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask,
    dropout: float = 0.0,
    scaling=None,
    is_causal=None,
    **kwargs,
):
    """Attention for transformers models: query ``[B, H, Lq, D]``, key/value
    ``[B, Hkv, Lk, D]``, the mask from :func:`mask_function`; returns
    ``(output [B, Lq, H, Dv], None)``."""
    if dropout:
        raise ValueError(
            f"fastattn has no dropout (got dropout={dropout}): set the model's attention "
            "dropout to 0 to train, or call model.eval() for inference"
        )
    if kwargs.get("s_aux") is not None:
        raise ValueError("fastattn does not support attention sinks (s_aux)")
    softcap = kwargs.get("softcap")
    position_bias = kwargs.get("position_bias")
    q_len = query.shape[2]
    if is_causal is None:
        is_causal = getattr(module, "is_causal", True)
    # As transformers' SDPA path: causal only for a prefill without an explicit mask (a
    # single query token attends to every cached key).
    is_causal = bool(q_len > 1 and attention_mask is None and is_causal)
    if position_bias is not None:
        from transformers.integrations.sdpa_attention import create_position_bias_mask

        attention_mask = create_position_bias_mask(
            position_bias, attention_mask, is_causal, query, key
        )
        is_causal = False
    enable_gqa = query.shape[1] != key.shape[1]
    if torch.compiler.is_compiling():
        if softcap is not None:
            raise ValueError("fastattn under torch.compile: softcap is not supported")
        from . import torch as fastattn_torch

        out = fastattn_torch.sdpa(
            query, key, value, attention_mask, 0.0, is_causal, scaling, enable_gqa
        )
        return out.transpose(1, 2).contiguous(), None
    out = sdpa_ext(
        query,
        key,
        value,
        attention_mask,
        is_causal=is_causal,
        scale=scaling,
        enable_gqa=enable_gqa,
        softcap=softcap,
        blhd=True,
    )
    return out, None


def register(name: str = "fastattn") -> str:
    """Registers the attention function and its mask function under ``name`` with
    transformers' ``AttentionInterface`` and ``AttentionMaskInterface``; returns ``name``
    (pass it as ``attn_implementation``)."""
    AttentionInterface.register(name, attention_forward)
    AttentionMaskInterface.register(name, mask_function)
    return name
