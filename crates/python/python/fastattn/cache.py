"""A transformers KV cache that never copies its history: :class:`FastattnCache`.

transformers' ``DynamicCache`` appends a token with ``torch.cat`` of the whole history, in
every layer, at every step: the copy grows with the context and costs more than the
attention. :class:`FastattnCache` is a ``DynamicCache`` (so ``generate`` accepts it like
its own) whose layers keep keys and values in preallocated ``[B, Hkv, capacity, D]``
buffers (sized for the whole call when ``generate`` says how long it is) that grow in
large steps (doubling, at least ``chunk`` positions) when they must: appending
writes only the new rows, and ``update`` returns views of the valid prefix, which
fastattn's attention reads in place (any strides). A growth copies the history once; the
amortised cost per token is a constant.

* The storage dtype is ``cache_dtype`` (default: the model's, i.e. the first keys'):
  float32, bfloat16 or float16. A bfloat16 cache under a float32 model halves the bytes
  decode reads; fastattn's attention takes the float32 queries against the bfloat16 rows
  (no widened copy).
* ``torch.int8``, ``torch.float8_e4m3fn`` or ``torch.float8_e5m2`` store codes with an
  f32 scale per token and head (``amax / max code``, in a ``[B, capacity, Hkv]`` buffer),
  quantised in Rust as rows are appended (:func:`fastattn.paged_kv_write`, each batch
  entry one page). Each key/value view carries its scales (``view._fastattn_scale``,
  ``[B, Hkv, len]``) and its layer (``view._fastattn_layer``): fastattn's attention reads
  the codes and scales in place where transformers passes no mask (decode and plain
  causal prefill; :meth:`FastattnLayer.attend`), else attends over their dequantised
  values. Full-attention layers only (no sliding-window layers yet).
* Sliding-window layers keep the same buffer and return a window view (the last
  ``sliding_window - 1`` cached rows and the new ones, as transformers'
  ``DynamicSlidingWindowLayer`` does); when the buffer is full the window is moved to its
  start (one copy of ``sliding_window`` rows, not of the history).
* ``crop``, ``reorder_cache`` (beam search), ``batch_repeat_interleave`` and
  ``batch_select_indices`` (assisted and contrastive decoding) work on the valid prefix.
* Left-padded batches need nothing special: transformers passes the same masks.

Use it through :func:`fastattn.transformers.use` (``generate`` then creates one per call)
or explicitly: ``model.generate(..., cache=FastattnCache(model.config))``.
"""

import numpy as np
import torch
from transformers.cache_utils import DynamicCache, DynamicLayer, get_layer_types_and_kwargs

from . import _fastattn
from ._serving import _flash_options, _sinks

__all__ = ["FastattnCache", "FastattnLayer", "FastattnSlidingLayer"]

_FLOAT = {torch.float32, torch.bfloat16, torch.float16}
# 8-bit storage: codes with an f32 scale per token and head.
_EIGHT_BIT = {torch.int8, torch.float8_e4m3fn, torch.float8_e5m2}


def _check_dtype(dtype):
    if dtype is not None and dtype not in _FLOAT | _EIGHT_BIT:
        raise TypeError(
            "cache_dtype must be torch.float32, torch.bfloat16, torch.float16, torch.int8, "
            f"torch.float8_e4m3fn or torch.float8_e5m2, got {dtype}"
        )


class FastattnLayer(DynamicLayer):
    """One full-attention layer of a :class:`FastattnCache`: keys and values in
    preallocated buffers, appended in place, handed out as views of the valid prefix."""

    def __init__(self, cache_dtype=None, chunk=256, capacity=None, **kwargs):
        super().__init__()
        _check_dtype(cache_dtype)
        self.cache_dtype = cache_dtype
        self.chunk = int(chunk)
        self.reserve = int(capacity or 0)
        self._k = self._v = None
        self._len = 0
        # Rows `_start ..` of the buffers hold the cached positions (a sliding layer moves
        # its window there); always 0 for full attention.
        self._start = 0

    # --- storage -------------------------------------------------------------------------

    def lazy_initialization(self, key_states, value_states):
        self.device = key_states.device
        dtype = self.cache_dtype or key_states.dtype
        b, h, _, d = key_states.shape
        dv = value_states.shape[-1]
        cap = max(self.chunk, self.reserve, key_states.shape[-2])
        self._k = torch.empty((b, h, cap, d), dtype=dtype, device=self.device)
        self._v = torch.empty((b, h, cap, dv), dtype=dtype, device=self.device)
        self._ks = self._vs = None
        if dtype in _EIGHT_BIT:
            # One scale per token and head, [B, capacity, Hkv]: the layout paged_kv_write
            # fills (each batch entry one page of `capacity` slots).
            self._ks = torch.empty((b, cap, h), dtype=torch.float32, device=self.device)
            self._vs = torch.empty((b, cap, h), dtype=torch.float32, device=self.device)
        self._plan = None
        self._len = 0
        self._start = 0
        self.is_initialized = True
        self._set_views()

    @property
    def capacity(self):
        """Positions the buffers hold before they grow."""
        return 0 if self._k is None else self._k.shape[-2]

    @property
    def quantised(self):
        """Whether the layer stores 8-bit codes with scales."""
        return getattr(self, "_ks", None) is not None

    def _set_views(self):
        end = self._start + self._len
        self.keys = self._k[:, :, self._start:end]
        self.values = self._v[:, :, self._start:end]
        if self.quantised:
            # The attention finds each view's scales (`[B, Hkv, len]`) and layer on it.
            self.keys._fastattn_scale = self._ks[:, self._start:end].transpose(1, 2)
            self.values._fastattn_scale = self._vs[:, self._start:end].transpose(1, 2)
            self.keys._fastattn_layer = self.values._fastattn_layer = self

    def _eight_bit_plan(self):
        """The extension's views of the 8-bit buffers, built once per allocation: the codes
        as uint8 numpy arrays ``[B, capacity, Hkv, D]`` (each batch entry one page), the
        scales flat with the strides of a row ``(page, slot, head)``, the page table."""
        if self._plan is None:
            b, h, cap = self._k.shape[:3]
            fmt = str(self._k.dtype).removeprefix("torch.")
            codes = [x.transpose(1, 2).view(torch.uint8).numpy() for x in (self._k, self._v)]
            scales = [x.numpy().reshape(-1) for x in (self._ks, self._vs)]
            self._plan = dict(
                fmt=fmt,
                codes=codes,
                scales=scales,
                strides=(cap * h, h, 1),
                table=np.arange(b, dtype=np.int32).reshape(b, 1),
                pages=np.arange(b, dtype=np.int64)[:, None] * cap,
                calls={},
            )
        return self._plan

    def attend(self, query, scaling, causal, softcap=None, s_aux=None):
        """Attention of ``query`` ``[B, Hq, Lq, D]`` over this 8-bit layer's cached rows,
        read in place (codes and scales); ``causal`` bottom-right. Returns
        ``[B, Lq, Hq, Dv]`` in the query's dtype."""
        p = self._eight_bit_plan()
        b, hq, lq, d = query.shape
        # Calls without sinks are kept per (scale, causal, soft-cap); sinks change per layer.
        key = (scaling, bool(causal), softcap or 0.0)
        call = p["calls"].get(key) if s_aux is None else None
        if call is None:
            call = _fastattn.Call.flash(
                returns="out",
                sinks=_sinks(s_aux),
                **_flash_options(bool(causal), scaling, (-1, -1), softcap or 0.0, None),
            )
            if s_aux is None:
                p["calls"][key] = call
        out = _fastattn.varlen_forward(
            call,
            query.transpose(1, 2).reshape(b * lq, hq, d),
            p["codes"][0],
            p["codes"][1],
            np.arange(b + 1, dtype=np.int64) * lq,
            None,
            np.full(b, self._start + self._len, dtype=np.int64),
            p["table"],
            p["fmt"],
            (p["scales"][0], p["strides"]),
            (p["scales"][1], p["strides"]),
        )
        return out.reshape(b, lq, hq, self._v.shape[-1])

    def _make_room(self, n):
        """Ensures rows ``_start + _len .. + n`` exist: grows the buffers (doubling, at
        least ``chunk`` more), copying the cached rows once."""
        need = self._start + self._len + n
        if need <= self.capacity:
            return
        cap = max(2 * self.capacity, self._len + n + self.chunk)
        k = self._k.new_empty((*self._k.shape[:2], cap, self._k.shape[-1]))
        v = self._v.new_empty((*self._v.shape[:2], cap, self._v.shape[-1]))
        k[:, :, : self._len] = self.keys
        v[:, :, : self._len] = self.values
        if self.quantised:
            ks = self._ks.new_empty((self._ks.shape[0], cap, self._ks.shape[2]))
            vs = self._vs.new_empty((self._vs.shape[0], cap, self._vs.shape[2]))
            ks[:, : self._len] = self._ks[:, self._start : self._start + self._len]
            vs[:, : self._len] = self._vs[:, self._start : self._start + self._len]
            self._ks, self._vs = ks, vs
        self._k, self._v, self._start = k, v, 0
        self._plan = None

    def _append(self, key_states, value_states):
        if key_states.shape[0] != self._k.shape[0]:
            raise ValueError(
                f"FastattnCache holds a batch of {self._k.shape[0]}, the call has "
                f"{key_states.shape[0]} (use batch_select_indices / batch_repeat_interleave)"
            )
        n = key_states.shape[-2]
        self._make_room(n)
        end = self._start + self._len
        if self.quantised:
            # Quantised in Rust (round to nearest even, saturating; NaN or inf refused), each
            # batch entry one page: slot b·capacity + position.
            p = self._eight_bit_plan()
            b, h, _, d = key_states.shape
            slots = (p["pages"] + np.arange(end, end + n, dtype=np.int64)).reshape(-1)
            _fastattn.paged_kv_write(
                key_states.transpose(1, 2).reshape(b * n, h, d),
                value_states.transpose(1, 2).reshape(b * n, h, value_states.shape[-1]),
                p["codes"][0],
                p["codes"][1],
                slots,
                p["fmt"],
                p["scales"][0],
                p["scales"][1],
                per_row_scales=True,
            )
        else:
            self._k[:, :, end:end + n] = key_states
            self._v[:, :, end:end + n] = value_states
        self._len += n
        self._set_views()

    # --- the layer interface -------------------------------------------------------------

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self._append(key_states, value_states)
        return self.keys, self.values

    def get_seq_length(self):
        return self._len if self.is_initialized else 0

    def reset(self):
        self._len = 0
        self._start = 0
        if self.is_initialized:
            self._set_views()

    def crop(self, tokens_to_remove):
        if tokens_to_remove > 0:
            raise ValueError(
                f"crop with a positive value ({tokens_to_remove}) is not supported: pass the "
                "negative number of tokens to remove"
            )
        if tokens_to_remove == 0 or not self.is_initialized:
            return
        self._len = max(self._len - abs(tokens_to_remove), 0)
        self._set_views()

    def _parts(self):
        """The valid rows: keys, values, and for an 8-bit layer their scales."""
        parts = [self.keys, self.values]
        if self.quantised:
            parts += [self.keys._fastattn_scale, self.values._fastattn_scale]
        return parts

    def _rebuild(self, parts):
        """New buffers holding ``parts`` (as :meth:`_parts`; a batch change)."""
        cap = self.capacity
        bufs = []
        for old, new in zip([self._k, self._v], parts):
            buf = old.new_empty((new.shape[0], old.shape[1], cap, old.shape[3]))
            buf[:, :, : self._len] = new
            bufs.append(buf)
        for old, new in zip([self._ks, self._vs], parts[2:]):
            # Scales: [B, capacity, Hkv] buffers, handed out as [B, Hkv, len] views.
            buf = old.new_empty((new.shape[0], cap, old.shape[2]))
            buf[:, : self._len] = new.transpose(1, 2)
            bufs.append(buf)
        self._k, self._v = bufs[0], bufs[1]
        if self.quantised:
            self._ks, self._vs = bufs[2], bufs[3]
        self._start = 0
        self._plan = None
        self._set_views()

    def reorder_cache(self, beam_idx):
        if self.is_initialized and self._len > 0:
            idx = beam_idx.to(self.device)
            # A gather of the valid rows, written back in place (beam search must reorder).
            for part in self._parts():
                part.copy_(part.index_select(0, idx))

    def batch_repeat_interleave(self, repeats):
        if self.is_initialized:
            self._rebuild([p.repeat_interleave(repeats, dim=0) for p in self._parts()])

    def batch_select_indices(self, indices):
        if self.is_initialized:
            self._rebuild([p[indices, ...] for p in self._parts()])


class FastattnSlidingLayer(FastattnLayer):
    """A sliding-window layer of a :class:`FastattnCache`: the same buffers, handing out
    the window view transformers' ``DynamicSlidingWindowLayer`` returns (the last
    ``sliding_window - 1`` cached rows and the new ones); a full buffer moves its window to
    its start instead of growing."""

    is_sliding = True

    def __init__(self, sliding_window, cache_dtype=None, chunk=256, **kwargs):
        if cache_dtype in _EIGHT_BIT:
            raise ValueError(
                f"FastattnCache: an 8-bit cache ({cache_dtype}) has no sliding-window layers yet"
            )
        # No capacity reserve: the window moves instead of growing.
        super().__init__(cache_dtype=cache_dtype, chunk=max(chunk, 2 * sliding_window))
        self.sliding_window = int(sliding_window)
        self.cumulative_length = 0
        self._sliding_window_tensor = torch.tensor(self.sliding_window, dtype=torch.long)

    def lazy_initialization(self, key_states, value_states):
        super().lazy_initialization(key_states, value_states)
        self._sliding_window_tensor = self._sliding_window_tensor.to(self.device)

    def _make_room(self, n):
        keep = self.sliding_window - 1
        if self._start + self._len + n > self.capacity and self._len > keep:
            # Move the window (the rows later calls can still see) to the buffer's start.
            lo = self._start + self._len - keep
            self._k[:, :, :keep] = self._k[:, :, lo:lo + keep].clone()
            self._v[:, :, :keep] = self._v[:, :, lo:lo + keep].clone()
            self._start, self._len = 0, keep
        super()._make_room(n)

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[-2]
        self.cumulative_length += n
        self._append(key_states, value_states)
        visible = min(self._len, self.sliding_window - 1 + n)
        end = self._start + self._len
        return self._k[:, :, end - visible:end], self._v[:, :, end - visible:end]

    def activate_past_recording(self, **kwargs):
        """Nothing to do: the buffer keeps every row since its last move."""

    def get_mask_sizes(self, query_length):
        is_full = self.cumulative_length >= self.sliding_window
        kv_offset = max(self.cumulative_length - self.sliding_window + 1, 0)
        if is_full:
            kv_length = self.sliding_window - 1 + query_length
        else:
            kv_length = self.cumulative_length + query_length
        return kv_length, kv_offset

    def get_seq_length(self):
        return self.cumulative_length

    def get_max_length(self):
        return self.sliding_window

    def reset(self):
        super().reset()
        self.cumulative_length = 0

    def crop(self, tokens_to_remove):
        if tokens_to_remove > 0:
            raise ValueError(
                f"crop with a positive value ({tokens_to_remove}) is not supported: pass the "
                "negative number of tokens to remove"
            )
        n = abs(tokens_to_remove)
        if n == 0 or not self.is_initialized:
            return
        # The buffer keeps every row since its last move: a crop is exact while the rows left
        # still cover the window the next call sees.
        if self._len - n < min(self.sliding_window - 1, self.cumulative_length - n):
            raise RuntimeError(
                "FastattnCache: cannot crop a sliding-window layer past the rows it still holds"
            )
        self._len -= n
        self.cumulative_length -= n
        self._set_views()


class FastattnCache(DynamicCache):
    """A transformers cache whose layers append in place (see the module docs).

    Args:
        config: the model's config (its layer types decide full or sliding-window layers);
            ``None``: full-attention layers, created as the model calls them.
        cache_dtype: the storage dtype (float32, bfloat16 or float16); default the model's.
        chunk: the smallest growth step, in positions.
        capacity: positions the full-attention layers allocate at once (``generate`` under
            :func:`fastattn.transformers.use` passes the prompt length plus
            ``max_new_tokens``, so the buffers never grow during the call).
    """

    def __init__(self, config=None, cache_dtype=None, chunk=256, capacity=None):
        _check_dtype(cache_dtype)
        self.cache_dtype = cache_dtype
        self.chunk = chunk
        super().__init__()
        if config is not None:
            layer_types, kwargs = get_layer_types_and_kwargs(config.get_text_config(decoder=True))
            layers = []
            for kind, kw in zip(layer_types, kwargs):
                if kind in ("sliding_attention", "chunked_attention"):
                    layers.append(FastattnSlidingLayer(kw["sliding_window"], cache_dtype, chunk))
                elif kind == "full_attention":
                    layers.append(FastattnLayer(cache_dtype, chunk, capacity))
                else:
                    raise ValueError(f"FastattnCache: layer type {kind!r} is not supported")
            self.layers = layers
            self.layer_class_to_replicate = None
        else:
            self.layers = []
            self.layer_class_to_replicate = lambda: FastattnLayer(cache_dtype, chunk, capacity)

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        if self.layer_class_to_replicate is None and layer_idx >= len(self.layers):
            raise ValueError(
                f"FastattnCache was built for a config of {len(self.layers)} layers, the model "
                f"called layer {layer_idx}: build it with this model's config"
            )
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)

    def nbytes(self):
        """Bytes the layers' buffers hold (allocated capacity: keys, values, and the
        scales of an 8-bit cache)."""
        total = 0
        for layer in self.layers:
            for buf in ("_k", "_v", "_ks", "_vs"):
                t = getattr(layer, buf, None)
                if t is not None:
                    total += t.nbytes
        return total
