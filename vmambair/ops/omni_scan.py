"""The planar omni scan: K selective scans over one feature map in different pixel orders.

Direction k reads the (H, W) map as a sequence of length L = H*W:
  k=0 row-major, k=1 column-major, k=2 row-major reversed, k=3 column-major reversed.
Each direction has its own delta/B/C (given per pixel, in the natural layout) and its own
A, D, delta_bias rows; the K outputs are mapped back to pixels and summed.

``planar_omni_scan`` uses a fused kernel (no permuted copies) when one is registered and can
run, and the batch holds at most ``runtime.get().fused_max_pixels`` pixels (batch * H * W); otherwise the
unfused path: permute copies -> selective_scan -> merge. Measured on an H200: the op alone is
faster fused at every size (benchmarks/data/fused_vs_unfused.json: 1.15-1.35x from 256x256 to 2048x2048,
1.27-1.48x forward + backward on training batches), but inside the compiled network the unfused path's permute copies
fuse into the neighbouring kernels while the fused op's transposed column copies
(the runtime switch scan_columns) do not: deraining a 1024x1024 image (compiled, CUDA graphs) took 237 ms
with the fused op at every level (benchmarks/model_derain_fused_inference.md in git history) and 215 ms with
this limit in an earlier run that still had the older, slower summary pass
(benchmarks/model_derain_infer_limit.md in git history). So the limit counts the whole batch: the fused op wins
where launches, not bytes, dominate. With the tiled column-only copies (seventh pass) the two
came out level on an H100 (fused at every size 1-2 % faster at 1024x1024 and 2048x2048, in two
processes, for 8 % more memory: benchmarks/data/fused_limit_h100.json), so the limit stays.
"""
import contextlib
from typing import Callable, Optional, Sequence

import torch

from .. import runtime
from .selective_scan import resolve_backend, selective_scan

# name of the scan backend -> fused implementation with planar_omni_scan's signature, called as
# fn(x, delta, A, B, C, D, delta_bias, columns=<the runtime column mode>)
_FUSED: dict[str, Callable] = {}


@contextlib.contextmanager
def fused_omni_scan(enabled: bool):
    """Allow (default) or forbid the fused kernels, e.g. to time the unfused execution strategy."""
    with runtime.use(fused_omni_scan=enabled):
        yield


def register_fused_omni_scan(backend_name: str, fn: Callable) -> None:
    """Let ``planar_omni_scan`` use ``fn`` whenever ``backend_name`` is the chosen scan backend."""
    _FUSED[backend_name] = fn


def direction_sequence(t: torch.Tensor, k: int) -> torch.Tensor:
    """(b, c, H, W) natural layout -> (b, c, L): the values in direction k's scan order."""
    seq = (t.transpose(2, 3) if k & 1 else t).flatten(2)
    return seq.flip(-1) if k & 2 else seq


def direction_map(y: torch.Tensor, k: int, H: int, W: int) -> torch.Tensor:
    """(b, d, L) in direction k's scan order -> (b, d, H, W) natural layout (direction_sequence's inverse)."""
    b, d, _ = y.shape
    if k & 2:
        y = y.flip(-1)
    return y.reshape(b, d, W, H).transpose(2, 3) if k & 1 else y.reshape(b, d, H, W)


def to_sequences(t: torch.Tensor, directions: Sequence[int]) -> torch.Tensor:
    """(b, K, c, H, W) natural layout, slot i holding direction directions[i] -> (b, K, c, L):
    each slot's values in its direction's scan order."""
    return torch.stack([direction_sequence(t[:, i], k) for i, k in enumerate(directions)], dim=1)


def merge_sequences(y: torch.Tensor, H: int, W: int, directions: Sequence[int]) -> torch.Tensor:
    """(b, K, d, L) outputs, slot i in direction directions[i]'s order -> (b, d, H, W), summed
    over the slots in order."""
    out = direction_map(y[:, 0], directions[0], H, W)
    for i in range(1, len(directions)):
        out = out + direction_map(y[:, i], directions[i], H, W)
    return out


def planar_omni_scan_unfused(x, delta, A, B, C, D=None, delta_bias=None, backend: Optional[str] = None,
                             directions: Optional[Sequence[int]] = None):
    """Reference execution: permuted copies, one grouped selective_scan, merge. Shapes as planar_omni_scan."""
    b, d, H, W = x.shape
    K = delta.shape[1]
    directions = range(K) if directions is None else directions
    L = H * W
    xs = to_sequences(x.unsqueeze(1).expand(b, K, d, H, W), directions).reshape(b, K * d, L)
    ds = to_sequences(delta, directions).reshape(b, K * d, L)
    y = selective_scan(xs, ds, A, to_sequences(B, directions), to_sequences(C, directions), D, delta_bias,
                       delta_softplus=True, backend=backend)
    return merge_sequences(y.view(b, K, d, L), H, W, directions)


def takes_fused_path(x: torch.Tensor, directions: Sequence[int], backend: Optional[str] = None) -> bool:
    """Whether planar_omni_scan runs the fused kernel for the map x (b, d, H, W) scanned in these
    directions: a fused op registered for the backend, allowed by the runtime switches, all four
    directions at once, and at most fused_max_pixels pixels in the batch."""
    settings = runtime.get()
    b, _, H, W = x.shape
    return (tuple(directions) == (0, 1, 2, 3) and settings.fused_omni_scan and b * H * W <= settings.fused_max_pixels
            and resolve_backend(x.device, backend).name in _FUSED)


def planar_omni_scan(x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                     C: torch.Tensor, D: Optional[torch.Tensor] = None,
                     delta_bias: Optional[torch.Tensor] = None, backend: Optional[str] = None,
                     directions: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Omni selective scan of a feature map in K directions, softplus on delta.

    Args:
        x: (b, d, H, W) scan input u.
        delta: (b, K, d, H, W) per-direction step sizes before bias and softplus.
        A: (K*d, N); slot k uses rows k*d .. k*d+d-1 (likewise D, delta_bias: (K*d,)).
        B, C: (b, K, N, H, W) per-direction input/output matrices.
        directions: which direction (0-3, see the module docstring) each of the K slots scans;
            default 0 .. K-1 (K in {1, 2, 4}).
    Returns:
        (b, d, H, W): the sum over the K slots, each mapped back to its pixel, in x's dtype.
    """
    directions = range(delta.shape[1]) if directions is None else directions
    name = resolve_backend(x.device, backend).name
    if takes_fused_path(x, directions, name):
        return _FUSED[name](x, delta, A, B, C, D, delta_bias, columns=runtime.get().scan_columns)
    return planar_omni_scan_unfused(x, delta, A, B, C, D, delta_bias, backend=name, directions=directions)
