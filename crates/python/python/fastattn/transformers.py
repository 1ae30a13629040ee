"""Hugging Face transformers integration: ``attn_implementation="fastattn"``, and
:func:`use` for every attention call of a model, continuous batching included.

::

    import fastattn.transformers
    fastattn.transformers.register()
    model = AutoModelForCausalLM.from_pretrained(name, attn_implementation="fastattn")

or, on a model already loaded::

    fastattn.transformers.use(model)   # model(...), generate and generate_batch

:func:`register` adds :func:`attention_forward` to transformers' ``AttentionInterface`` and
transformers' own SDPA mask builder (``masking_utils.sdpa_mask``: a boolean
``[B, 1, Lq, Lk]`` mask, or ``None`` when the mask is plain causal) to its
``AttentionMaskInterface`` under the same name. The forward follows transformers'
``sdpa_attention_forward`` calling convention, with these differences:

* grouped-query attention runs on the key/value heads as they are (no ``repeat_kv``);
* the result is written straight into the ``[B, Lq, H, D]`` layout transformers wants
  (no transpose copy);
* ``softcap`` (Gemma 2) is applied by the kernel;
* attention sinks (``s_aux``, gpt-oss) join the softmax in the kernel (differentiable);
* dropout is refused with a ``ValueError``.

Continuous batching (``generate_batch``): transformers accepts only its own
implementations there ("Implementation fastattn is not supported for continuous
batching"); :func:`use` lets it accept fastattn (see :func:`enable_continuous_batching`).
The forward then receives transformers' paged-attention arguments (``cu_seq_lens_q/k``,
``max_length_q/k``, ``read_index``/``write_index``, ``block_table``, ``k_cache``/``v_cache``,
``sliding_window``, ``softcap``, ``s_aux``) and attends once per batch through
:func:`fastattn.flash_attn_varlen_func`, each request its own causal problem:

* prefill and mixed batches: full-attention layers read each request's keys in place from
  the cache rows, through a block table of one-row pages built from transformers' read
  indices (its ``index_select`` gather is skipped); sliding-window layers (a ring buffer)
  take the K/V transformers gathered, packed. No dense mask is built, and K/V are never
  repeated over the grouped heads;
* decode-only batches (transformers' "decode fast path", turned on for fastattn on the
  CPU): the new rows are written to their cache slots and the cache pages are read in
  place through the block table, without gathering.

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
from ._serving import flash_attn_varlen_func
from .cache import FastattnCache

__all__ = [
    "register", "use", "enable_continuous_batching", "attention_forward", "mask_function",
    "FastattnCache",
]

# The names registered by `register`: continuous batching accepts these.
_NAMES = set()
# The key of the paged-cache rows `_cache_update` hands to the forward.
_PAGES = "fastattn_cache_rows"


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
    if _is_paged_call(attention_mask, kwargs):
        causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
        return _paged_forward(module, query, key, value, scaling, causal, kwargs), None
    s_aux = kwargs.get("s_aux")
    softcap = kwargs.get("softcap")
    position_bias = kwargs.get("position_bias")
    q_len = query.shape[2]
    if is_causal is None:
        is_causal = getattr(module, "is_causal", True)
    # As transformers' SDPA path: causal only for a prefill without an explicit mask (a
    # single query token attends to every cached key).
    is_causal = bool(q_len > 1 and attention_mask is None and is_causal)
    if key.dtype in _EIGHT_BIT:
        key, value, out = _eight_bit(query, key, value, attention_mask, position_bias, is_causal,
                                     scaling, softcap, s_aux)
        if out is not None:
            return out, None
    if position_bias is not None:
        from transformers.integrations.sdpa_attention import create_position_bias_mask

        attention_mask = create_position_bias_mask(
            position_bias, attention_mask, is_causal, query, key
        )
        is_causal = False
    enable_gqa = query.shape[1] != key.shape[1]
    if torch.compiler.is_compiling():
        if softcap is not None or s_aux is not None:
            raise ValueError("fastattn under torch.compile: softcap and s_aux are not supported")
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
        s_aux=s_aux,
        # A FastattnCache may store another dtype than the model's (bf16 under f32).
        mixed_kv=key.dtype != query.dtype,
    )
    return out, None


_EIGHT_BIT = {torch.int8, torch.float8_e4m3fn, torch.float8_e5m2}


def _eight_bit(query, key, value, attention_mask, position_bias, is_causal, scaling, softcap, s_aux):
    """Attention over an 8-bit ``FastattnCache`` layer's views: without a mask, the codes
    and their scales are read in place (the layer's :meth:`~fastattn.cache.FastattnLayer.attend`,
    or ``flash_attn_with_kvcache`` for views of part of a layer; returns ``(.., .., out)``);
    with one, the dequantised keys and values for the float path (``(key, value, None)``)."""
    ks = getattr(key, "_fastattn_scale", None)
    vs = getattr(value, "_fastattn_scale", None)
    if ks is None or vs is None or value.dtype != key.dtype:
        raise ValueError(
            f"8-bit keys/values ({key.dtype}, {value.dtype}) without their scales: they come "
            "from a fastattn.cache.FastattnCache"
        )
    if attention_mask is None and position_bias is None:
        layer = getattr(key, "_fastattn_layer", None)
        if layer is not None and key is layer.keys and value is layer.values:
            return key, value, layer.attend(query, scaling, is_causal, softcap, s_aux)
        from ._serving import flash_attn_with_kvcache

        out = flash_attn_with_kvcache(
            query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
            softmax_scale=scaling, causal=is_causal, softcap=softcap or 0.0, s_aux=s_aux,
            k_scale=ks.transpose(1, 2), v_scale=vs.transpose(1, 2),
        )
        return key, value, out
    deq = lambda x, s: (x.float() * s[..., None]).to(query.dtype)  # noqa: E731
    return deq(key, ks), deq(value, vs), None


def _is_paged_call(attention_mask, kwargs):
    """Whether transformers' continuous batching calls: packed sequences described by
    ``cu_seq_lens_q/k``, no mask."""
    return (
        attention_mask is None
        and kwargs.get("cu_seq_lens_q") is not None
        and kwargs.get("cu_seq_lens_k") is not None
    )


def _packed(x):
    """``[B, H, L, D]`` (B = 1 in continuous batching) as packed ``[B·L, H, D]`` (a view
    for B = 1)."""
    return x.transpose(1, 2).reshape(-1, x.shape[1], x.shape[3])


def _paged_forward(module, query, key, value, scaling, causal, kwargs):
    """One continuous-batching step: query ``[1, Hq, Tq, D]`` packed over the requests
    (``cu_seq_lens_q``); key/value ``[1, Hkv, Tk, D]`` packed (``cu_seq_lens_k``), or, with
    a block table, the new rows of a decode-only batch (one per request) with the paged
    caches in ``k_cache``/``v_cache``. Returns ``[1, Tq, Hq, Dv]``."""
    cu_q = kwargs["cu_seq_lens_q"]
    cu_k = kwargs["cu_seq_lens_k"]
    sliding = kwargs.get("sliding_window")
    options = dict(
        softmax_scale=scaling,
        causal=bool(causal),
        window_size=(sliding - 1, -1) if sliding else (-1, -1),
        softcap=kwargs.get("softcap") or 0.0,
        s_aux=kwargs.get("s_aux"),
    )
    q = _packed(query)
    block_table = kwargs.get("block_table")
    k_cache, v_cache = kwargs.get("k_cache"), kwargs.get("v_cache")
    if block_table is not None and k_cache is not None and v_cache is not None:
        # Decode fast path: transformers left the cache write to the attention (as
        # flash_attn_with_kvcache does). Write the new rows to their slots, then read the
        # pages in place.
        new_k, new_v = _packed(key), _packed(value)  # one row per request
        n = new_k.shape[0]
        lengths = (cu_k[1 : n + 1] - cu_k[:n]).long()
        pos = lengths - 1
        page = k_cache.shape[1]
        rows = torch.arange(n)
        slots = block_table[rows, pos // page].long() * page + pos % page
        # transformers' K and V page views interleave in one buffer: a torch scatter, as
        # its own cache update (fastattn.paged_kv_write refuses overlapping caches).
        k_cache.view(-1, *k_cache.shape[2:]).index_copy_(0, slots, new_k.to(k_cache.dtype))
        v_cache.view(-1, *v_cache.shape[2:]).index_copy_(0, slots, new_v.to(v_cache.dtype))
        out = flash_attn_varlen_func(
            q, k_cache, v_cache, cu_q, cu_k, None, None, block_table=block_table, **options
        )
    elif kwargs.get(_PAGES) is not None:
        # Prefill or mixed batch on a full-attention layer: the new rows are in the cache
        # (`_cache_update`); read every request's keys in place, one-row pages in
        # transformers' read order.
        k_rows, v_rows, read_index = kwargs[_PAGES]
        lengths = (cu_k[1:] - cu_k[:-1]).long()
        width = int(lengths.max()) if lengths.numel() else 0
        table = torch.full((lengths.numel(), width), -1, dtype=torch.int32)
        table[torch.arange(width)[None, :] < lengths[:, None]] = read_index.to(torch.int32)
        out = flash_attn_varlen_func(
            q, k_rows.unsqueeze(1), v_rows.unsqueeze(1), cu_q, cu_k, None, None,
            block_table=table, **options,
        )
    else:
        out = flash_attn_varlen_func(q, _packed(key), _packed(value), cu_q, cu_k, None, None, **options)
    return out.unsqueeze(0)


def register(name: str = "fastattn") -> str:
    """Registers the attention function and its mask function under ``name`` with
    transformers' ``AttentionInterface`` and ``AttentionMaskInterface``; returns ``name``
    (pass it as ``attn_implementation``)."""
    AttentionInterface.register(name, attention_forward)
    AttentionMaskInterface.register(name, mask_function)
    _NAMES.add(name)
    return name


def use(model, name: str = "fastattn", cache_dtype=None, cache: bool = True):
    """Makes every attention call of ``model`` run in fastattn: registers ``name``
    (:func:`register`), sets it as the model's attention implementation (every
    sub-model's too) and lets continuous batching accept it
    (:func:`enable_continuous_batching`). Covers ``model(...)``, ``generate`` and
    ``generate_batch``, for float32 and bfloat16 models, without CUDA-only settings.

    With ``cache`` (the default), ``model.generate`` uses a
    :class:`fastattn.cache.FastattnCache` (which appends in place instead of copying the
    history every token) stored as ``cache_dtype`` (float32, bfloat16 or float16; default
    the model's dtype) unless the call passes ``past_key_values`` or a
    ``cache_implementation`` of its own. Returns ``model``.

    ::

        import fastattn.transformers
        fastattn.transformers.use(model)                              # model's dtype
        fastattn.transformers.use(model, cache_dtype=torch.bfloat16)  # half the bytes
    """
    from .cache import _check_dtype

    _check_dtype(cache_dtype)
    register(name)
    model.set_attn_implementation(name)
    enable_continuous_batching()
    if cache:
        _generate_with_cache(model, cache_dtype)
    return model


def _cache_keyword():
    """``generate``'s name for a cache: ``cache`` in transformers versions that renamed
    ``past_key_values`` (5.x), else ``past_key_values``."""
    from transformers.utils import generic

    return "cache" if hasattr(generic, "_rename_kwargs_for_bc") else "past_key_values"


_CACHE_KW = _cache_keyword()


def _planned_length(args, kwargs, config):
    """The prompt length plus ``max_new_tokens`` of a ``generate`` call, where both are
    given (the cache then never grows during the call); else ``None``."""
    ids = args[0] if args else kwargs.get("input_ids")
    new = kwargs.get("max_new_tokens", getattr(config, "max_new_tokens", None))
    if isinstance(ids, torch.Tensor) and ids.dim() >= 1 and isinstance(new, int):
        return ids.shape[-1] + new
    return None


def _generate_with_cache(model, cache_dtype):
    """Wraps ``model.generate`` (once) so that a call without a cache of its own gets a
    ``FastattnCache``."""
    from .cache import FastattnCache

    original = getattr(model.generate, "_fastattn_original", model.generate)

    def generate(*args, **kwargs):
        wants_cache = kwargs.get("use_cache", True) is not False
        own = any(kwargs.get(k) is not None for k in ("cache", "past_key_values", "cache_params"))
        config = kwargs.get("generation_config") or getattr(model, "generation_config", None)
        own = own or kwargs.get("cache_implementation") or getattr(config, "cache_implementation", None)
        if wants_cache and not own:
            kwargs[_CACHE_KW] = FastattnCache(
                model.config, cache_dtype=cache_dtype, capacity=_planned_length(args, kwargs, config)
            )
        return original(*args, **kwargs)

    generate._fastattn_original = original
    generate.__doc__ = original.__doc__
    model.generate = generate


_CB_ENABLED = False


def enable_continuous_batching():
    """Lets transformers' continuous batching (``generate_batch``,
    ``init_continuous_batching``) run models whose attention implementation is a name
    :func:`register` added. transformers accepts only ``"sdpa"``, ``"paged|eager"`` and
    flash implementations there, and keeps its block-table decode path for flash on CUDA;
    this wraps the two checks (``ContinuousBatchingManager.switch_to_cb_friendly_attn``
    and ``ensure_decode_fast_path_is_available``) so that, for fastattn's names only, the
    implementation is kept and the decode path stays on. It also wraps
    ``PagedAttentionCache.update``: for fastattn's names, a full-attention layer of a
    batch that reads the cache writes the new rows and passes the cache rows and read
    indices on, so the forward reads each request's keys in place (one-row pages) instead
    of transformers gathering them. Other implementations see no change. Idempotent."""
    global _CB_ENABLED
    if _CB_ENABLED:
        return
    _CB_ENABLED = True
    try:
        from transformers.generation.continuous_batching import cache, continuous_api, initialization
    except ImportError:  # a transformers without this continuous batching
        return
    # Each hook is wrapped only where this transformers has it (names of transformers
    # 5.x): a missing one leaves transformers' own behaviour.
    manager = getattr(continuous_api, "ContinuousBatchingManager", None)
    if manager is not None and hasattr(manager, "switch_to_cb_friendly_attn"):
        manager.switch_to_cb_friendly_attn = _accepting(manager.switch_to_cb_friendly_attn)
    if hasattr(initialization, "ensure_decode_fast_path_is_available"):
        initialization.ensure_decode_fast_path_is_available = _keeping_decode_path(
            initialization, initialization.ensure_decode_fast_path_is_available
        )
    paged = getattr(cache, "PagedAttentionCache", None)
    if paged is not None and hasattr(paged, "update"):
        paged.update = torch.compiler.disable(_reading_in_place(paged.update))


def _accepting(switch):
    """``switch_to_cb_friendly_attn`` that keeps fastattn's names as they are."""

    def switch_to_cb_friendly_attn(self, model, *args, **kwargs):
        if model.config._attn_implementation in _NAMES:
            return None
        return switch(self, model, *args, **kwargs)

    return switch_to_cb_friendly_attn


def _keeping_decode_path(initialization, ensure):
    """``ensure_decode_fast_path_is_available`` that keeps the block-table decode path for
    fastattn's names where every attention type supports block tables."""

    def ensure_decode_fast_path_is_available(config, cb_config, user_requested):
        wanted = cb_config.max_blocks_per_request
        ensure(config, cb_config, user_requested)
        if config._attn_implementation in _NAMES and wanted != 0:
            attn_types = initialization.group_layers_by_attn_type(config)
            allocators = initialization.ATTN_TYPE_TO_ALLOCATOR
            if all(allocators[t].supports_block_table for t in attn_types):
                cb_config.max_blocks_per_request = wanted

    return ensure_decode_fast_path_is_available


def _reading_in_place(update):
    """``PagedAttentionCache.update`` that, for fastattn's names, on full-attention layers
    of batches that read the cache, writes the new rows as transformers does but hands the
    forward the cache rows and read indices instead of gathering every request's history
    (``index_select``)."""
    try:
        from transformers.generation.continuous_batching.cache_allocators import (
            FullAttentionCacheAllocator,
        )
    except ImportError:
        return update

    def cache_update(self, key_states, value_states, layer_idx, kwargs):
        allocator = self.layer_to_allocator[layer_idx]
        rows = getattr(allocator, "_kv_token_views", {}).get(layer_idx)
        if (
            self.config._attn_implementation not in _NAMES
            or kwargs.get("block_table") is not None
            or type(allocator) is not FullAttentionCacheAllocator
            or rows is None
            or kwargs["read_index"][allocator.index].numel() == 0
        ):
            return update(self, key_states, value_states, layer_idx, kwargs)
        kwargs["cu_seq_lens_k"] = kwargs["cu_seq_lens_k"][allocator.layer_type].to(torch.int32)
        kwargs["max_length_k"] = kwargs["max_length_k"][allocator.layer_type]
        k_rows, v_rows = rows
        write_index = kwargs["write_index"][allocator.index]
        k_rows.index_copy_(0, write_index, key_states[0].transpose(0, 1))
        v_rows.index_copy_(0, write_index, value_states[0].transpose(0, 1))
        n = min(k_rows.shape[0], v_rows.shape[0])
        kwargs[_PAGES] = (k_rows[:n], v_rows[:n], kwargs["read_index"][allocator.index])
        return key_states, value_states

    return cache_update
