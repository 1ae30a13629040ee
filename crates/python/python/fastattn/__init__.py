"""fastattn: scaled dot-product attention on the CPU, from Rust SIMD kernels.

Works on torch CPU tensors and numpy arrays (float32, float16, bfloat16, any strides),
read and written in place; results come back in the query's kind.

* :func:`scaled_dot_product_attention`: a drop-in for
  ``torch.nn.functional.scaled_dot_product_attention`` (same arguments and semantics:
  top-left ``is_causal``, bool masks True = attend, float masks added, ``enable_gqa``).
* :func:`flash_attn_func`: FlashAttention-2's ``[B, L, H, D]`` API, bottom-right aligned,
  with every option of the library (window, soft-cap, ALiBi, key lengths, LSE, mask).
* :func:`flash_attn_varlen_func`, :func:`flash_attn_with_kvcache`: FlashAttention-2's
  serving APIs: packed sequences of different lengths (``cu_seqlens``), K/V packed or read
  in place from a paged cache through a block table, appends to a dense or paged KV cache,
  attention sinks (``s_aux``).
* :func:`paged_kv_write`: new K/V rows scattered to paged cache slots (vLLM's
  ``reshape_and_cache``).
* :func:`attention_weights`: the attention matrix ``[..., H, Lq, Lk]`` and its LSE.
* :func:`set_num_threads` / :func:`get_num_threads`: threads of calls on numpy arrays
  (calls on torch tensors use ``torch.get_num_threads()``, read at each call).
* :func:`set_blocktime` / :func:`get_blocktime`: how long idle helper threads stay awake
  (yielding their CPU) between calls.
* Autograd: on torch tensors that require grad, :func:`scaled_dot_product_attention`
  and :func:`flash_attn_func` are differentiable (the library's backward pass; gradients
  in the inputs' dtypes and shapes, summed over broadcast dimensions). Masks and ALiBi
  slopes get no gradient (one that requires grad is a ``ValueError``); the LSE output of
  ``flash_attn_func(..., return_lse=True)`` is not differentiable; there is no double
  backward, and :func:`attention_weights` has no backward.
* ``fastattn.torch``: the ``fastattn::sdpa`` torch op, differentiable
  (``torch.compile``), and the ``fastattn::attention`` op whose registered backward is the
  autograd of every differentiable call.
* ``fastattn.transformers.register()``: ``attn_implementation="fastattn"`` in Hugging
  Face transformers; ``fastattn.transformers.use(model)``: every attention call of a
  model in fastattn, ``generate_batch`` (continuous batching, paged cache) included.

The GIL is released while a call computes. Errors are ``TypeError`` (wrong kind or
dtype) and ``ValueError`` (shapes, options), carrying the library's message.

The functions are Python (``_functions.py``) over a small private extension,
``fastattn._fastattn`` (Rust): a call description (``Call``) and the entry points
``forward``, ``backward`` and ``time_forward`` that take it.
"""

from ._fastattn import __version__
from ._functions import (
    attention_weights,
    flash_attn_func,
    get_blocktime,
    get_num_threads,
    kernel_variant,
    scaled_dot_product_attention,
    set_blocktime,
    set_num_threads,
)
from ._serving import flash_attn_varlen_func, flash_attn_with_kvcache, paged_kv_write

__all__ = [
    "__version__",
    "attention_weights",
    "flash_attn_func",
    "flash_attn_varlen_func",
    "flash_attn_with_kvcache",
    "get_blocktime",
    "get_num_threads",
    "kernel_variant",
    "paged_kv_write",
    "scaled_dot_product_attention",
    "set_blocktime",
    "set_num_threads",
]
