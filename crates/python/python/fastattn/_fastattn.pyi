"""Type stubs of the extension module ``fastattn._fastattn``."""

from typing import Any, Optional, Sequence, Tuple, TypeVar, Union

# A torch.Tensor or a numpy.ndarray; results are of the query's kind.
T = TypeVar("T")
_Seq = Union[Sequence[float], Sequence[Sequence[float]], Any]

__version__: str

def scaled_dot_product_attention(
    query: T,
    key: Any,
    value: Any,
    attn_mask: Optional[Any] = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: Optional[float] = None,
    enable_gqa: bool = False,
) -> T: ...
def attention_weights(
    query: T,
    key: Any,
    value: Any,
    attn_mask: Optional[Any] = None,
    is_causal: bool = False,
    scale: Optional[float] = None,
    enable_gqa: bool = False,
) -> Tuple[T, T]: ...
def flash_attn_func(
    q: T,
    k: Any,
    v: Any,
    causal: bool = False,
    softmax_scale: Optional[float] = None,
    window_size: Tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: Optional[_Seq] = None,
    return_lse: bool = False,
    kv_lengths: Optional[Union[Sequence[int], Any]] = None,
    *,
    attn_mask: Optional[Any] = None,
    dropout_p: float = 0.0,
    deterministic: bool = True,
    path: Optional[str] = None,
    variant: Optional[str] = None,
) -> Union[T, Tuple[T, T]]: ...
def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...
def kernel_variant() -> str: ...
def _sdpa_ext(
    query: T,
    key: Any,
    value: Any,
    attn_mask: Optional[Any] = None,
    is_causal: bool = False,
    scale: Optional[float] = None,
    enable_gqa: bool = False,
    softcap: Optional[float] = None,
    blhd: bool = False,
) -> T: ...
def _sdpa_fwd(
    query: T,
    key: Any,
    value: Any,
    attn_mask: Optional[Any] = None,
    is_causal: bool = False,
    scale: Optional[float] = None,
    enable_gqa: bool = False,
    softcap: Optional[float] = None,
    blhd: bool = False,
    strict_mask: bool = True,
) -> Tuple[T, T]: ...
def _sdpa_bwd(
    grad_out: Any,
    query: T,
    key: Any,
    value: Any,
    out: Any,
    lse: Any,
    attn_mask: Optional[Any] = None,
    is_causal: bool = False,
    scale: Optional[float] = None,
    enable_gqa: bool = False,
    softcap: Optional[float] = None,
    blhd: bool = False,
) -> Tuple[T, T, T]: ...
def _flash_bwd(
    grad_out: Any,
    q: T,
    k: Any,
    v: Any,
    out: Any,
    lse: Any,
    causal: bool = False,
    softmax_scale: Optional[float] = None,
    window_size: Tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: Optional[_Seq] = None,
    kv_lengths: Optional[Union[Sequence[int], Any]] = None,
    *,
    attn_mask: Optional[Any] = None,
    variant: Optional[str] = None,
) -> Tuple[T, T, T]: ...
def _time_rust(query: Any, key: Any, value: Any, is_causal: bool = False, calls: int = 100) -> float: ...
