"""Type stubs of the extension module ``fastattn._fastattn`` (private: the public functions
are in ``fastattn``, written in Python over this module)."""

from typing import Any, Literal, Optional, Sequence, Tuple, TypeVar, Union, final

# A torch.Tensor or a numpy.ndarray; results are of the query's kind.
T = TypeVar("T")
_Seq = Union[Sequence[float], Sequence[Sequence[float]], Any]
_Returns = Literal["out", "out_lse", "weights_lse"]
_KvFormat = Literal["int8", "float8_e4m3fn", "float8_e5m2"]

__version__: str

@final
class Call:
    """One call, described once: its shape rules, its options and what it returns
    (``"out"``: the output; ``"out_lse"``: ``(out, lse)``; ``"weights_lse"``:
    ``(weights, lse)``). Immutable; options are checked when it is built."""

    @staticmethod
    def torch(
        *,
        returns: _Returns = "out",
        is_causal: bool = False,
        scale: Optional[float] = None,
        enable_gqa: bool = False,
        softcap: Optional[float] = None,
        blhd: bool = False,
        strict_mask: bool = True,
        sinks: Optional[Sequence[float]] = None,
    ) -> "Call":
        """torch's SDPA rules (top-left ``is_causal``); ``blhd``: the output laid out
        ``[B, Lq, H, Ev]``; ``strict_mask``: the mask is bool, float32 or the query's
        dtype (torch's rule); ``sinks``: one logit per query head."""
    @staticmethod
    def flash(
        *,
        returns: _Returns = "out",
        causal: bool = False,
        softmax_scale: Optional[float] = None,
        window_size: Tuple[int, int] = (-1, -1),
        softcap: float = 0.0,
        alibi_slopes: Optional[_Seq] = None,
        kv_lengths: Optional[Union[Sequence[int], Any]] = None,
        path: Optional[str] = None,
        variant: Optional[str] = None,
        sinks: Optional[Sequence[float]] = None,
    ) -> "Call":
        """FlashAttention-2's ``flash_attn_func`` rules (``[B, L, H, D]``, bottom-right
        aligned); also the variable-length calls' options (``varlen_forward``)."""

def forward(call: Call, q: T, k: Any, v: Any, mask: Optional[Any] = None) -> Union[T, Tuple[T, T]]:
    """The forward of ``call``: ``out``, ``(out, lse)`` or ``(weights, lse)``. Records no
    autograd node."""

def backward(
    call: Call, q: T, k: Any, v: Any, mask: Optional[Any], out: Any, lse: Any, grad_out: Any
) -> Tuple[T, T, T]:
    """The float32 gradients ``(dq, dk, dv)`` of a forward of ``call`` (``out`` and ``lse``
    as it returned them with ``returns="out_lse"``). Torch rules: shaped as the inputs with
    broadcast dimensions at full size (sum them back with ``sum_to_size``)."""

def time_forward(
    call: Call, q: Any, k: Any, v: Any, mask: Optional[Any] = None, calls: int = 100
) -> float:
    """Seconds taken by ``calls`` back-to-back library calls of ``call``'s forward (views
    and output built once)."""

def varlen_forward(
    call: Call,
    q: T,
    k: Any,
    v: Any,
    cu_seqlens_q: Any,
    cu_seqlens_k: Optional[Any] = None,
    seqused_k: Optional[Any] = None,
    block_table: Optional[Any] = None,
    kv_format: Optional[_KvFormat] = None,
    k_scale: Optional[Tuple[Any, Tuple[int, int, int]]] = None,
    v_scale: Optional[Tuple[Any, Tuple[int, int, int]]] = None,
) -> Union[T, Tuple[T, T]]:
    """The variable-length forward of a ``Call.flash`` (``returns`` ``"out"`` or
    ``"out_lse"``): q ``[Tq, Hq, D]``; k, v packed ``[Tk, Hkv, D]`` or, with
    ``block_table`` (``[B, max_blocks]``), paged ``[num_blocks, block_size, Hkv, D]``. Index
    arrays: contiguous int32/int64 numpy arrays. Output ``[Tq, Hq, Dv]``, LSE ``[Hq, Tq]``.

    8-bit K/V (``kv_format``): k, v are uint8 numpy arrays over the codes' bytes, and
    ``k_scale``, ``v_scale`` are ``(scales, strides)``: a contiguous 1-D float32 numpy array
    and the element strides mapping a row ``(i0, i1, i2)`` of the library's 4-D view
    (``[1, Hkv, Tk, D]`` packed, the cache's own dims paged) to its scale (0 broadcasts)."""


def varlen_backward(
    call: Call,
    q: Any,
    k: Any,
    v: Any,
    out: Any,
    lse: Any,
    grad_out: Any,
    cu_seqlens_q: Any,
    cu_seqlens_k: Any,
) -> Tuple[Any, Any, Any, Optional[Any]]:
    """The gradients of ``varlen_forward`` on packed K/V: ``(dq, dk, dv, dsinks)`` float32
    in q's kind (``dsinks`` ``(Hq,)`` when ``call`` has sinks, else ``None``), from the
    forward's ``out`` ``[Tq, Hq, Dv]`` and ``lse`` ``[Hq, Tq]`` and the output's gradient."""

def paged_kv_write(
    k: Any,
    v: Any,
    k_cache: Any,
    v_cache: Any,
    slot_mapping: Any,
    kv_format: Optional[_KvFormat] = None,
    k_scale: Optional[Any] = None,
    v_scale: Optional[Any] = None,
) -> None:
    """Writes rows ``[T, Hkv, D]`` into paged caches at ``slot_mapping`` (an int numpy
    array; -1 skips), in place; caches that overlap each other or the rows are refused.

    8-bit caches (``kv_format``): uint8 numpy arrays over the codes' bytes, with 1-D
    float32 numpy ``k_scale``, ``v_scale``: int8, one per slot and head
    (``num_blocks·block_size·Hkv``, contiguous, written); fp8, 1 or Hkv given scales."""

def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...
def set_blocktime(ms: float) -> None: ...
def get_blocktime() -> float: ...
def kernel_variant() -> str: ...
