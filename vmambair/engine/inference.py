"""The one inference path: padding, tiling, x8 self-ensemble, memory planning and out-of-memory
retries, for tensors (:func:`run_inference`) and decoded images (:func:`restore_array`).

Used by validation during training, ``test.py``, the end-of-training report, ``restore.py`` and
the Python API (``vmambair.restore``), so that all of them restore an image the same way.

Memory. Before an image runs, its peak memory is estimated from its size and the network's
measured per-pixel cost (:func:`measure_memory_profile`: one small probe forward per network,
device and precision, cached), and compared with the memory free on the device
(:func:`available_memory`). The image then runs whole when it fits, else in the largest tiles that
fit (:func:`plan_tiles`). VmambaIR's scans see the whole input, so a tiled result differs slightly
from a whole-image one: tiling happens only where it must, and is logged. Should the estimate be
wrong, an out-of-memory error (CUDA's, or the CPU allocator's) is caught and the image retried
in tiles half as large (:func:`run_inference`); what cannot run even in the smallest tiles raises
:class:`ImageTooLargeError`, whose message is one line naming the image, its size and the memory
it needed.

Everything here runs under :func:`evaluation_mode` (``torch.no_grad()``): no result tracks
gradients and no activation is kept for a backward pass.
"""
from __future__ import annotations

import contextlib
import time
import weakref
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple, Union

import cv2
import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ..utils.padding import pad_to_multiple

GB = 1 << 30
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

# Memory estimates: measured peak x SAFETY + OVERHEAD. The probe counts the bytes of the tensors
# alive at once; the process needs more: allocator fragmentation and, on the CPU, oneDNN and
# glibc scratch. On this project's 2-core CPU machine the real-world x4 network's RSS growth was
# 1.07-1.25x the probe's estimate plus about 150 MB (128x128 to 320x480 inputs; see
# benchmarks/eval_memory_cpu.md); the factors below cover that with a margin.
SAFETY = {"cpu": 1.25, "cuda": 1.15}
OVERHEAD = {"cpu": 256 << 20, "cuda": 128 << 20}
# Share of the free memory an image may plan to use (the rest is left to everything else).
DEFAULT_MEMORY_FRACTION = 0.75
PROBE_SIZE = 64          # probe input side (pixels)


def evaluation_mode():
    """The context every evaluation and restore path runs under: ``torch.no_grad()``, so no
    autograd graph is built and no activation is kept for a backward pass (results never track
    gradients), and VmambaIR runs its SR tail in strips.

    Not ``torch.inference_mode()``: its results are inference tensors, which callers could not
    modify in place afterwards (``out.clamp_(0, 1)`` raises outside inference mode) and which a
    training step must never meet; the memory saved is the same (no activations kept)."""
    return torch.no_grad()


def autocast_context(device: torch.device, bf16: bool = True, dtype: torch.dtype = torch.bfloat16):
    """Autocast to ``dtype`` (bf16, or fp16) on CUDA when ``bf16`` (enabled) is true and the device
    supports bf16; a no-op (fp32) anywhere else."""
    if bf16 and device.type == "cuda" and (dtype != torch.bfloat16 or torch.cuda.is_bf16_supported()):
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def precision_context(device: torch.device, precision: str):
    """Autocast for ``precision`` ('fp32', 'bf16', 'fp16') on ``device`` (CPU: always fp32)."""
    return autocast_context(device, precision in AUTOCAST_DTYPES, AUTOCAST_DTYPES.get(precision, torch.bfloat16))


def effective_precision(device: torch.device, precision: str) -> str:
    """The precision a run really uses: the CPU, and a GPU without bf16 asked for bf16, run fp32."""
    if device.type != "cuda" or precision not in AUTOCAST_DTYPES:
        return "fp32"
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        return "fp32"
    return precision


# ----------------------------------------------------------------------------- errors
class ImageTooLargeError(RuntimeError):
    """An image that does not fit in memory even in the smallest tiles. ``str(err)`` is one line."""

    def __init__(self, name: str, size: Tuple[int, int], needed: int, available: int, tile: int, device: str):
        h, w = size
        self.name, self.size, self.needed, self.available, self.tile = name, size, needed, available, tile
        need = (f"needs about {needed / GB:.2f} GB whole" if needed > 0 else
                "even the memory probe ran out of memory")
        super().__init__(f"{name} ({w}x{h}): out of {device} memory even in {tile}px tiles ({need}, "
                         f"{available / GB:.2f} GB free)")


def is_out_of_memory(err: BaseException) -> bool:
    """True for CUDA's and the CPU allocator's out-of-memory errors (and Python's MemoryError)."""
    if isinstance(err, ImageTooLargeError):  # already handled: not to be retried again
        return False
    if isinstance(err, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    oom_type = getattr(torch, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(err, oom_type):
        return True
    if isinstance(err, RuntimeError):
        text = str(err)
        return ("DefaultCPUAllocator" in text or "can't allocate memory" in text
                or "out of memory" in text.lower() or "not enough memory" in text)
    return False


# ----------------------------------------------------------------------------- memory
def proc_kib_field(path: str, key: str) -> Optional[int]:
    """The ``key:  N kB`` line of a /proc file (``/proc/meminfo``, ``/proc/self/status``) in bytes,
    or None where it cannot be read."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _meminfo_available() -> Optional[int]:
    return proc_kib_field("/proc/meminfo", "MemAvailable")


def _cgroup_available() -> Optional[int]:
    """Room left under a cgroup v2 memory limit (containers), if there is one."""
    try:
        limit = open("/sys/fs/cgroup/memory.max").read().strip()
        if limit == "max":
            return None
        return max(int(limit) - int(open("/sys/fs/cgroup/memory.current").read()), 0)
    except (OSError, ValueError):
        return None


def process_rss() -> int:
    """Resident memory of this process in bytes (0 where /proc is missing)."""
    return proc_kib_field("/proc/self/status", "VmRSS") or 0


def available_memory(device: torch.device) -> int:
    """Bytes free for new tensors on ``device``.

    CPU: psutil's available memory when installed, else ``MemAvailable`` of /proc/meminfo,
    capped by a cgroup v2 limit. CUDA: ``torch.cuda.mem_get_info`` plus what torch's caching
    allocator holds but does not use.
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    free = None
    try:
        import psutil  # optional
        free = int(psutil.virtual_memory().available)
    except ImportError:
        free = _meminfo_available()
    cgroup = _cgroup_available()
    if cgroup is not None:
        free = cgroup if free is None else min(free, cgroup)
    return free if free is not None else 8 * GB  # no way to know (not Linux): assume a modest machine


def memory_in_use(device: torch.device) -> int:
    """What this process already holds on ``device``: RSS on the CPU, allocated memory on CUDA."""
    device = torch.device(device)
    return int(torch.cuda.memory_allocated(device)) if device.type == "cuda" else process_rss()


def memory_budget(device: torch.device, max_memory: Optional[float] = None,
                  fraction: float = DEFAULT_MEMORY_FRACTION) -> int:
    """Bytes one image may plan to use on ``device``: ``fraction`` of the free memory, and, when
    ``max_memory`` (bytes) is given, no more than would take the process beyond it (on the CPU its
    RSS, on CUDA its allocated memory)."""
    budget = int(available_memory(device) * fraction)
    if max_memory is not None:
        budget = min(budget, int(max_memory) - memory_in_use(device))
    return max(budget, 0)


class _LiveTensorBytes(TorchDispatchMode):
    """Counts the bytes of tensor storages created inside the mode and still alive; keeps the peak.

    Storages that an operation received as an input (weights, the input image) are not counted,
    also when an output aliases them (a view of a weight)."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._owned: Dict[int, List[int]] = {}   # storage pointer -> [tensors alive, bytes]
        self._external: set = set()

    def _release(self, key: int) -> None:
        entry = self._owned.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            del self._owned[key]
            self.live -= entry[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        for t in tree_flatten((args, kwargs))[0]:
            if isinstance(t, torch.Tensor):
                key = t.untyped_storage().data_ptr()
                if key not in self._owned:
                    self._external.add(key)
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key == 0 or key in self._external:
                continue
            entry = self._owned.get(key)
            if entry is None:
                self._owned[key] = [1, storage.nbytes()]
                self.live += storage.nbytes()
                self.peak = max(self.peak, self.live)
            else:
                entry[0] += 1
            weakref.finalize(t, self._release, key)
        return out


@dataclass
class MemoryProfile:
    """Peak memory of one forward pass as a function of its input pixels (after padding).

    ``peak_bytes(p) = (per_pixel * p + tail_per_pixel * min(p, tail_strip_pixels)) * safety
    + overhead``. ``tail_per_pixel`` is what a network whose upsampling tail runs in strips
    (VmambaIR for SR, ``tail_strip_pixels``) needs beyond its body while the tail runs whole;
    0 for other networks.
    """
    per_pixel: float
    tail_per_pixel: float = 0.0
    tail_strip_pixels: int = 0
    safety: float = 1.0
    overhead: int = 0
    device: str = "cpu"
    precision: str = "fp32"

    def peak_bytes(self, pixels: int) -> int:
        tail = self.tail_per_pixel * min(pixels, self.tail_strip_pixels) if self.tail_per_pixel else 0.0
        return int((self.per_pixel * pixels + tail) * self.safety + self.overhead)


def unwrap_network(net):
    """The module behind inference wrappers: CUDA-graph replay (``.net``), DDP/EMA (``.module``),
    a compiled module (``._orig_mod``)."""
    for _ in range(4):
        inner = getattr(net, "net", None) if not isinstance(net, torch.nn.Module) else None
        inner = inner or getattr(net, "_orig_mod", None)
        if inner is None and isinstance(net, torch.nn.parallel.DistributedDataParallel):
            inner = net.module
        if inner is None:
            return net
        net = inner
    return net


_PROFILES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _eager_stance():
    """Run compiled blocks eagerly during the probe (a probe size must not compile a graph)."""
    stance = getattr(getattr(torch, "compiler", None), "set_stance", None)
    return stance("force_eager") if stance is not None else contextlib.nullcontext()


def _probe_peak(net, x: torch.Tensor, device: torch.device, precision: str) -> int:
    """Peak bytes of new tensors during ``net(x)``: the CUDA allocator's peak on CUDA, else
    :class:`_LiveTensorBytes`."""
    with evaluation_mode(), precision_context(device, precision), _eager_stance():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            before = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            out = net(x)
            torch.cuda.synchronize(device)
            peak = torch.cuda.max_memory_allocated(device) - before
            del out
            return int(peak)
        with _LiveTensorBytes() as counter:
            out = net(x)
        del out
        return int(counter.peak)


def measure_memory_profile(net, device: torch.device, precision: str = "fp32", channels: int = 3,
                           multiple: int = 8, probe: Optional[int] = None) -> MemoryProfile:
    """Measure (once per network, device and effective precision; cached) the network's memory.

    One forward pass on a ``probe`` x ``probe`` (default :data:`PROBE_SIZE`) random input gives the per-pixel cost (peak /
    pixels, so the probe's fixed costs are spread over its pixels: an over- rather than an
    under-estimate for larger images). For a network with an upsampling tail that runs in strips
    (``tail_strip_pixels``, VmambaIR for SR), a second probe with one-row strips separates the
    body's per-pixel cost from the tail's, since large images run the tail in bounded strips.
    Compiled blocks run eagerly for the probe (no compilation for the probe size).

    Args:
        net: (1, channels, h, w) -> (1, c_out, h*s, w*s); may be a wrapper (see :func:`unwrap_network`).
        device: where the network runs. precision: 'fp32' / 'bf16' / 'fp16' (autocast on CUDA).
    """
    device = torch.device(device)
    precision = effective_precision(device, precision)
    module = unwrap_network(net)
    key = (str(device), precision, channels)
    try:
        cache = _PROFILES.setdefault(module, {})
    except TypeError:  # not weak-referenceable: measure each time
        cache = {}
    if key in cache:
        return cache[key]
    side = max(-(-(probe or PROBE_SIZE) // multiple) * multiple, multiple)
    x = torch.rand(1, channels, side, side, device=device)
    pixels = side * side
    strip_attr = "tail_strip_pixels"
    strips = int(getattr(module, strip_attr, 0) or 0) if getattr(module, "scale", 1) != 1 else 0
    tail_per_pixel = 0.0
    if strips:
        had_own = strip_attr in vars(module)
        old = getattr(module, strip_attr)
        try:
            setattr(module, strip_attr, pixels * 4)   # whole tail at the probe size
            whole = _probe_peak(module, x, device, precision)
            setattr(module, strip_attr, 1)            # one-row strips: the body's cost
            body = _probe_peak(module, x, device, precision)
        finally:
            if had_own:
                setattr(module, strip_attr, old)
            else:
                delattr(module, strip_attr)
        tail_per_pixel = max(whole - body, 0) / pixels
        per_pixel = body / pixels
    else:
        per_pixel = _probe_peak(module, x, device, precision) / pixels
    profile = MemoryProfile(per_pixel=per_pixel, tail_per_pixel=tail_per_pixel, tail_strip_pixels=strips,
                            safety=SAFETY.get(device.type, 1.25), overhead=OVERHEAD.get(device.type, 256 << 20),
                            device=str(device), precision=precision)
    cache[key] = profile
    return profile


# ----------------------------------------------------------------------------- planning
@dataclass
class TilePlan:
    """How an image will run: ``tile`` None = whole image, else square tiles of that many input
    pixels. ``needed``: estimated peak bytes of the whole image; ``budget``: bytes allowed."""
    tile: Optional[int]
    needed: int
    budget: int


def _padded(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def tiled_extra_bytes(h: int, w: int, scale: int, out_channels: int, batch: int = 1) -> int:
    """Host-side buffers of a tiled run: the fp32 output and weight accumulators and the padded input."""
    return 4 * (h * scale * w * scale * (batch * out_channels + 1) + batch * 3 * h * w)


def plan_tiles(h: int, w: int, profile: MemoryProfile, budget: int, scale: int = 1, out_channels: int = 3,
               multiple: int = 8, overlap: int = 32, min_tile: Optional[int] = None,
               accumulate_on_device: bool = True) -> TilePlan:
    """Whole image when its estimated peak fits ``budget``, else square tiles: as few as the largest
    tile that fits allows, each as small as that count allows (:func:`balanced_tile`).

    Args:
        h, w: input size. profile: the network's memory (:func:`measure_memory_profile`).
        budget: bytes allowed (:func:`memory_budget`).
        accumulate_on_device: whether the tiled output is accumulated in the same memory as the
            network runs in (False when the network runs on a GPU and the image stays on the host).
        min_tile: the smallest tile worth trying (default: twice the overlap, at least 2 *
            ``multiple``); when even that does not fit, the plan is that tile anyway, and the
            caller's out-of-memory handling decides.

    Returns:
        :class:`TilePlan`.
    """
    H, W = _padded(h, multiple), _padded(w, multiple)
    needed = profile.peak_bytes(H * W)
    if needed <= budget:
        return TilePlan(None, needed, budget)
    extra = tiled_extra_bytes(H, W, scale, out_channels) if accumulate_on_device else 0
    min_tile = max(min_tile or 2 * overlap, 2 * multiple)
    tile = max(H, W) // multiple * multiple
    # Largest multiple of `multiple` whose tile fits (the per-tile peak is monotone in the tile).
    lo, hi = 0, tile // multiple
    while lo < hi:
        mid = (lo + hi + 1) // 2
        t = mid * multiple
        if profile.peak_bytes(min(t, H) * min(t, W)) + extra <= budget:
            lo = mid
        else:
            hi = mid - 1
    smallest = _padded(min_tile, multiple)
    tile = max(lo * multiple, smallest)
    return TilePlan(balanced_tile(H, W, tile, overlap, multiple, smallest), needed, budget)


def balanced_tile(h: int, w: int, tile: int, overlap: int = 32, multiple: int = 8, smallest: int = 0) -> int:
    """The smallest tile size (a multiple of ``multiple``, at most ``tile``, at least ``smallest``)
    that covers an h x w image with as few tiles as ``tile`` does.

    The largest tile that fits in memory rarely divides the image well: a 1024-pixel side needs
    three 472-pixel tiles as it needs three 368-pixel ones, and the smaller tiles do 40 % less
    work (less overlap recomputed) in less memory.
    """
    def counts(t: int) -> Tuple[int, int]:
        tg, ov = _tile_geometry(t, overlap, multiple)
        return (len(_tile_starts(h, min(tg, h), ov, multiple)), len(_tile_starts(w, min(tg, w), ov, multiple)))

    target, best = counts(tile), tile
    for t in range(tile - multiple, max(smallest, multiple) - 1, -multiple):
        if counts(t) != target:
            break
        best = t
    return best


# ----------------------------------------------------------------------------- running
def _forward_padded(net: Callable, img: torch.Tensor, scale: int, multiple: int) -> torch.Tensor:
    h, w = img.shape[-2:]
    out = net(pad_to_multiple(img, multiple))
    return out[..., : h * scale, : w * scale]


def _tile_starts(size: int, tile: int, overlap: int, multiple: int) -> List[int]:
    """Start offsets of tiles of ``tile`` pixels covering ``size`` pixels (both multiples of
    ``multiple``), neighbours overlapping by at least ``overlap``, spread evenly.

    Every start is a multiple of ``multiple`` so that a network that downsamples by ``multiple``
    sees each tile on the same pixel grid as the whole image (otherwise even a purely local
    network would give different outputs tiled and untiled).
    """
    if size <= tile:
        return [0]
    units, step = (size - tile) // multiple, (tile - overlap) // multiple
    n = -(-units // max(step, 1)) + 1          # tiles needed so that no gap exceeds `step` units
    # Spread `units` over n-1 gaps as evenly as possible (gaps differ by at most one unit).
    return [(k * units // (n - 1)) * multiple for k in range(n)]


def count_tiles(h: int, w: int, tile: Optional[int], overlap: int = 32, multiple: int = 8) -> int:
    """How many forward passes :func:`restore_image` makes for an h x w image (without ensemble)."""
    H, W = _padded(h, multiple), _padded(w, multiple)
    if not tile or (h <= tile and w <= tile):
        return 1
    tile, overlap = _tile_geometry(tile, overlap, multiple)
    return len(_tile_starts(H, min(tile, H), overlap, multiple)) * len(_tile_starts(W, min(tile, W), overlap, multiple))


def _tile_geometry(tile: int, overlap: int, multiple: int) -> Tuple[int, int]:
    tile = max(int(tile) // multiple * multiple, multiple)
    overlap = max(int(overlap), 0)
    overlap = min(-(-overlap // multiple) * multiple, tile // 2 // multiple * multiple)
    return tile, overlap


def _edge_ramp(length: int, cut_before: bool, cut_after: bool, overlap: int, device) -> torch.Tensor:
    """Blend weights (length,) of one tile along one axis.

    At a cut edge (a side where a neighbouring tile continues the image) the weight is 0 for
    the first ``overlap // 4`` pixels, whose outputs are spoiled by the missing context, then
    rises linearly to 1 at ``overlap - overlap // 4``; two neighbours overlapping by exactly
    ``overlap`` therefore get weights that sum to 1. Sides on the image border keep weight 1.
    """
    w = torch.ones(length, device=device, dtype=torch.float32)
    if overlap <= 0:
        return w
    margin = overlap // 4
    d = torch.arange(length, device=device, dtype=torch.float32)
    ramp = lambda dist: ((dist - margin + 0.5) / (overlap - 2 * margin)).clamp(0, 1)  # noqa: E731
    if cut_before:
        w = w * ramp(d)
    if cut_after:
        w = w * ramp(length - 1 - d)
    return w


def restore_image(net: Callable[[torch.Tensor], torch.Tensor], img: torch.Tensor, scale: int = 1,
                  tile: Optional[int] = None, overlap: int = 32, multiple: int = 8,
                  self_ensemble: bool = False, device: Optional[torch.device] = None,
                  progress: Optional[Callable[[int, int], None]] = None) -> torch.Tensor:
    """Restore ``img`` of any size with ``net``, with exactly the tiling asked for (no memory
    planning, no retries: see :func:`run_inference` for those). Runs under :func:`evaluation_mode`.

    Args:
        net: callable mapping (b, c, H', W') with H', W' multiples of ``multiple`` to
            (b, c_out, H'*scale, W'*scale).
        img: (b, c, H, W) input, any H, W.
        scale: output / input size ratio.
        tile: if set and the image is larger, process ``tile`` x ``tile`` input tiles (rounded
            down to a multiple of ``multiple``) overlapping by at least ``overlap`` pixels, and
            blend the overlaps with weights that fall to zero near each tile's cut edges (see
            :func:`_edge_ramp`). Network memory is then bounded by one tile. For a network whose
            receptive field reaches less than ``overlap // 4`` pixels the result equals the
            untiled one (up to float rounding); for a global network (VmambaIR's scans) it is a
            seamless approximation.
        multiple: pad the input (reflection) to a multiple of this before the network; crop back.
        self_ensemble: average over the 8 flips/rotations (x8 slower; one output-sized sum kept).
        device: where the network runs (default: ``img``'s device). Tiles are moved there one
            at a time and the output is accumulated on ``img``'s device, so a large image can
            stay in host memory while a GPU restores it.
        progress: called as ``progress(done, total)`` after each forward pass.

    Returns:
        (b, c_out, H*scale, W*scale) output on ``img``'s device (float32 when tiled or ensembled).
    """
    with evaluation_mode():
        if self_ensemble:
            total = None
            for k in range(8):
                y = _dihedral_inverse(_restore_once(net, _dihedral(img, k), scale, tile, overlap, multiple, device,
                                                    None), k).float()
                total = y if total is None else total.add_(y)
                del y
                if progress:
                    progress(k + 1, 8)
            return total.div_(8)
        return _restore_once(net, img, scale, tile, overlap, multiple, device, progress)


def _restore_once(net, img, scale, tile, overlap, multiple, device, progress) -> torch.Tensor:
    run_on = device if device is not None else img.device
    b, _, h, w = img.shape
    if tile is None or tile <= 0 or (h <= tile and w <= tile):
        out = _forward_padded(net, img.to(run_on), scale, multiple).to(img.device)
        if progress:
            progress(1, 1)
        return out

    # Pad the whole image once, so that tiles touching the bottom/right border see the same
    # reflected pixels as an untiled pass would.
    padded = pad_to_multiple(img, multiple)
    H, W = padded.shape[-2:]
    tile, overlap = _tile_geometry(tile, overlap, multiple)
    th, tw = min(tile, H), min(tile, W)
    tops, lefts = _tile_starts(H, th, overlap, multiple), _tile_starts(W, tw, overlap, multiple)
    output, weight = None, torch.zeros((1, 1, H * scale, W * scale), device=img.device, dtype=torch.float32)
    total, done = len(tops) * len(lefts), 0
    for i, top in enumerate(tops):
        wy = _edge_ramp(th * scale, i > 0, i < len(tops) - 1, overlap * scale, img.device)
        for j, left in enumerate(lefts):
            wx = _edge_ramp(tw * scale, j > 0, j < len(lefts) - 1, overlap * scale, img.device)
            patch = padded[..., top: top + th, left: left + tw].to(run_on)
            out = net(patch).float().to(img.device)
            if output is None:
                output = torch.zeros((b, out.shape[1], H * scale, W * scale), device=img.device, dtype=torch.float32)
            t, l = top * scale, left * scale
            wt = wy[:, None] * wx[None, :]
            output[..., t: t + th * scale, l: l + tw * scale] += out * wt
            weight[..., t: t + th * scale, l: l + tw * scale] += wt
            del out
            done += 1
            if progress:
                progress(done, total)
    # The layout guarantees positive weight everywhere; the clamp only guards degenerate
    # settings (tiny tiles with a large overlap) against a division by zero.
    return output.div_(weight.clamp_min(1e-12))[..., : h * scale, : w * scale]


def _dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """k in 0..7: rotate by 90*(k % 4) degrees, then flip horizontally if k >= 4."""
    x = torch.rot90(x, k % 4, dims=(-2, -1))
    return torch.flip(x, dims=(-1,)) if k >= 4 else x


def _dihedral_inverse(x: torch.Tensor, k: int) -> torch.Tensor:
    if k >= 4:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, -(k % 4), dims=(-2, -1))


TileSetting = Union[int, str, None]


def _profile_or_none(net, device, precision, channels, multiple) -> Optional[MemoryProfile]:
    """:func:`measure_memory_profile`, or None when the probe itself runs out of memory."""
    try:
        return measure_memory_profile(net, device, precision, channels=channels, multiple=multiple)
    except Exception as err:  # noqa: BLE001
        if not is_out_of_memory(err):
            raise
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    return None


def parse_tile(value: TileSetting) -> TileSetting:
    """'auto' -> 'auto'; 0 or None -> 0 (whole image, as ``restore_image``'s ``tile=None``); a
    positive int (or its text) -> that tile size.

    Raises:
        ValueError: anything else, with the accepted forms.
    """
    if value is None:
        return 0
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        tile = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"tile must be 'auto', 0 (whole image) or a positive number of pixels; got {value!r}") from None
    if tile < 0:
        raise ValueError(f"tile must be 'auto', 0 (whole image) or a positive number of pixels; got {value!r}")
    return tile


@dataclass
class InferenceResult:
    """What :func:`run_inference` did: ``output`` (b, c_out, H*s, W*s); ``tile`` None when the image
    ran whole; ``tiles`` forward passes per ensemble member; ``needed`` / ``budget`` the estimate
    and the memory allowed (0 where no estimate was made); ``retries`` out-of-memory retries."""
    output: torch.Tensor
    tile: Optional[int]
    tiles: int
    needed: int
    budget: int
    retries: int
    seconds: float


def run_inference(net: Callable[[torch.Tensor], torch.Tensor], img: torch.Tensor, *, scale: int = 1,
                  tile: TileSetting = "auto", overlap: int = 32, multiple: int = 8, self_ensemble: bool = False,
                  device: Optional[torch.device] = None, precision: str = "fp32",
                  max_memory: Optional[float] = None, budget: Optional[int] = None, name: str = "image",
                  log: Optional[Callable[[str], None]] = None,
                  progress: Optional[Callable[[int, int], None]] = None,
                  on_oom: Optional[Callable[[], None]] = None) -> InferenceResult:
    """Restore one image tensor the way every entry point does.

    Args:
        net: (b, c, H', W') -> (b, c_out, H'*scale, W'*scale), H', W' multiples of ``multiple``.
        img: (b, c, H, W) in [0, 1], any size; may stay on the host while ``device`` is a GPU.
        tile: 'auto' (whole image where the estimate fits the memory budget, else the largest
            tiles that fit), 0 / None (whole image) or a tile size in input pixels.
        device: where the network runs (default: ``img``'s device).
        precision: 'fp32', 'bf16' or 'fp16' (autocast on CUDA; the CPU runs fp32).
        max_memory: cap in bytes on the process's memory on ``device`` (see :func:`memory_budget`).
        budget: bytes the image may use, instead of measuring the free memory (tests; callers
            with their own accounting).
        name: how messages name the image. log: receives one-line notes (tiling, retries).
        progress: ``progress(done, total)`` after each forward pass.
        on_oom: called after an out-of-memory error, before the retry (e.g. drop CUDA graphs).

    Returns:
        :class:`InferenceResult`.

    Raises:
        ImageTooLargeError: out of memory even in the smallest tiles (twice the overlap).
    """
    start = time.perf_counter()
    device = torch.device(device) if device is not None else img.device
    b, c, h, w = img.shape
    tile = parse_tile(tile)
    needed = plan_budget = 0
    if tile == "auto":
        plan_budget = budget if budget is not None else memory_budget(device, max_memory)
        profile = _profile_or_none(net, device, precision, c, multiple)
        if profile is None:  # the probe itself ran out of memory: start whole, retry smaller below
            tile = None
        else:
            plan = plan_tiles(h, w, profile, plan_budget, scale, c, multiple, overlap,
                              accumulate_on_device=img.device == device)
            needed, tile = plan.needed, plan.tile
        if tile is not None and log:
            log(f"note: {name} ({w}x{h}) needs about {needed / GB:.2f} GB whole, {plan_budget / GB:.2f} GB "
                f"available on {device.type}: restored in {count_tiles(h, w, tile, overlap, multiple)} tiles of "
                f"{tile}px (the network's scans then see one tile at a time, so the result differs slightly "
                f"from a whole-image pass)")
    tile = tile or None
    retries = 0
    min_tile = max(2 * max(int(overlap), 0), 2 * multiple)
    while True:
        try:
            with precision_context(device, precision):
                out = restore_image(net, img, scale=scale, tile=tile, overlap=overlap, multiple=multiple,
                                    self_ensemble=self_ensemble, device=device, progress=progress)
            return InferenceResult(out, tile if tile and (h > tile or w > tile) else None,
                                   count_tiles(h, w, tile, overlap, multiple), needed, plan_budget, retries,
                                   time.perf_counter() - start)
        except Exception as err:  # noqa: BLE001  (only out-of-memory errors are handled; the rest re-raised)
            if not is_out_of_memory(err):
                raise
            del err
        # Outside the except block, so that the traceback (and the frames holding the failed
        # pass's tensors) is released before the retry allocates again.
        if on_oom:
            on_oom()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        side = max(_padded(h, multiple), _padded(w, multiple))
        current = min(tile or side, side)  # a tile larger than the image ran it whole
        smaller = current // 2 // multiple * multiple
        if smaller < min_tile:
            if not needed:
                profile = _profile_or_none(net, device, precision, c, multiple)
                needed = profile.peak_bytes(_padded(h, multiple) * _padded(w, multiple)) if profile else 0
            raise ImageTooLargeError(name, (h, w), needed, available_memory(device), current, device.type)
        retries += 1
        if log:
            log(f"note: {name} ({w}x{h}): out of {device.type} memory in "
                f"{'one piece' if tile is None else f'{current}px tiles'}; retrying in {smaller}px tiles")
        tile = smaller


# ----------------------------------------------------------------------------- numpy images
def _peak_value(dtype) -> float:
    return 255.0 if dtype == np.uint8 else 65535.0 if dtype == np.uint16 else 1.0


def restore_array(net: Callable[[torch.Tensor], torch.Tensor], img: np.ndarray, scale: int = 1,
                  tile: TileSetting = "auto", overlap: int = 32, multiple: int = 8,
                  device: Optional[torch.device] = None, precision: str = "fp32", alpha: str = "resize",
                  self_ensemble: bool = False, progress: Optional[Callable[[int, int], None]] = None, *,
                  max_memory: Optional[float] = None, budget: Optional[int] = None, name: str = "image",
                  log: Optional[Callable[[str], None]] = None,
                  on_oom: Optional[Callable[[], None]] = None) -> np.ndarray:
    """Restore one decoded image, keeping its layout (``restore.py`` and ``vmambair.restore``).

    Args:
        net: (1,3,h,w) RGB in [0,1] -> (1,3,h*scale,w*scale).
        img: (H,W) gray, (H,W,3) BGR or (H,W,4) BGRA; uint8, uint16 or float32 in [0,1].
        tile: 'auto', 0 / None (whole image) or a tile size; see :func:`run_inference`.
        overlap, multiple, self_ensemble: see :func:`restore_image`.
        device: where the network runs (the image stays in host memory).
        precision: 'fp32', or 'bf16' / 'fp16' autocast (CUDA only).
        alpha: 'resize' (keep; bicubic for scale > 1) or 'network' (restore it as a gray image).
        max_memory, budget, name, log, on_oom: see :func:`run_inference`.

    Returns:
        (H*scale, W*scale[, C]) array with ``img``'s dtype and channels.

    Raises:
        ImageTooLargeError: out of memory even in the smallest tiles.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    peak = _peak_value(img.dtype)
    x = np.clip(img.astype(np.float32) / peak, 0, 1)
    gray = x.ndim == 2
    a = x[:, :, 3] if (not gray and x.shape[2] == 4) else None
    bgr = np.repeat(x[:, :, None], 3, axis=2) if gray else x[:, :, :3]

    def run(bgr_img: np.ndarray, report, label: str) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(bgr_img[:, :, ::-1].transpose(2, 0, 1)))[None]
        result = run_inference(net, t, scale=scale, tile=tile, overlap=overlap, multiple=multiple,
                               self_ensemble=self_ensemble, device=device, precision=precision,
                               max_memory=max_memory, budget=budget, name=label, log=log, progress=report,
                               on_oom=on_oom)
        return result.output.float().clamp_(0, 1)[0].permute(1, 2, 0).numpy()[:, :, ::-1]

    out = run(bgr, progress, name)
    if gray:
        out = cv2.cvtColor(np.ascontiguousarray(out), cv2.COLOR_BGR2GRAY)
    if a is not None:
        if alpha == "network":
            a_out = run(np.repeat(a[:, :, None], 3, axis=2), None, f"{name} (alpha)").mean(axis=2)
        elif scale != 1:
            a_out = np.clip(cv2.resize(a, (a.shape[1] * scale, a.shape[0] * scale),
                                       interpolation=cv2.INTER_CUBIC), 0, 1)
        else:
            a_out = a
        out = np.concatenate([out, a_out[:, :, None]], axis=2)
    out = np.ascontiguousarray(out)
    if img.dtype == np.float32:
        return out.astype(np.float32)
    return np.round(out * peak).astype(img.dtype)


__all__ = ["GB", "ImageTooLargeError", "InferenceResult", "MemoryProfile", "TilePlan", "autocast_context",
           "available_memory", "balanced_tile", "count_tiles", "evaluation_mode", "is_out_of_memory", "measure_memory_profile",
           "memory_budget", "parse_tile", "plan_tiles", "precision_context", "restore_array", "restore_image",
           "run_inference"]
