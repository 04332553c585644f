"""VmambaIR (Shi et al. 2024): a UNet of Omni Selective Scan (OSS) blocks.

Shapes follow PyTorch's (batch, channels, height, width). Level widths are C, 2C, 4C, 8C
(C = ``dim``); the decoder's level 1 and the refinement run at 2C. The paper's Section 4 is
the specification this file implements, parameter for parameter; docs/authors_code.md lists
where the authors' code differs and how to build their variants.

Ablations of the paper's Table 4 are constructor options (or ``ablation: V1..V4``):
V1 one-direction planar scan, no channel scan; V2 four directions, no channel scan;
V3 no EFFN; V4 linear layers with reshapes instead of 1x1 convolutions.
"""
import contextlib
import math
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as checkpoint
from basicsr.utils.registry import ARCH_REGISTRY

from .. import ops, runtime
from ..utils.padding import pad_to_multiple

ABLATIONS = {
    "V1": dict(scan_directions=1, channel_scan=False),
    "V2": dict(scan_directions=4, channel_scan=False),
    "V3": dict(effn=False),
    "V4": dict(linear_proj=True),
}
SR_SCALES = (1, 2, 3, 4, 8)


class LayerNorm2d(nn.Module):
    """LayerNorm over channels at each pixel, with weight and bias: (b, c, h, w) -> same."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x):
        # the normalised shape from the parameter's length, not x.shape: a constant when traced for ONNX
        x = F.layer_norm(x.permute(0, 2, 3, 1), (len(self.weight),), self.weight, self.bias, self.eps)
        # Returned with channels-last strides, so the convolutions after it run channels-last. With
        # the output made contiguous (NCHW) instead, which spares the fused scan its input copies,
        # an H100 restored 1.12x (256x256) to 1.53x (1024x1024) slower
        # (benchmarks/data/layout_nchw_norm_h100.json).
        return x.permute(0, 3, 1, 2)


class Pointwise(nn.Module):
    """1x1 convolution, or (ablation V4) a Linear layer applied after a channels-last reshape."""

    def __init__(self, c_in: int, c_out: int, bias: bool, linear: bool = False):
        super().__init__()
        self.linear = linear
        self.proj = nn.Linear(c_in, c_out, bias=bias) if linear else nn.Conv2d(c_in, c_out, 1, bias=bias)

    def forward(self, x):
        if self.linear:
            return self.proj(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.proj(x)


# cuDNN runs a depthwise convolution of 2^31 or more elements with a 64-bit-index kernel that is
# ~100x slower (an H200 spent 170 ms per call in it on the 512-channel EFFN maps of a 2048x2048
# deraining input, half of the whole forward: benchmarks/profile_derain_2048.md in git history). Depthwise
# convolutions act per channel, so they run exactly the same on channel slices below the limit.
DEPTHWISE_MAX_ELEMENTS = 2 ** 31 - 1


def depthwise_conv3x3(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Depthwise 3x3 convolution, padding 1, no bias: x (b, c, h, w), weight (c, 1, 3, 3) -> (b, c, h, w),
    on channel slices of at most DEPTHWISE_MAX_ELEMENTS elements each."""
    b, c, h, w = x.shape
    step = max(1, DEPTHWISE_MAX_ELEMENTS // max(1, b * h * w))
    if c <= step:
        return F.conv2d(x, weight, padding=1, groups=c)
    return torch.cat([F.conv2d(x[:, i:i + step], weight[i:i + step], padding=1, groups=weight[i:i + step].shape[0])
                      for i in range(0, c, step)], dim=1)


def run_recomputed(module: nn.Module, fn, x: torch.Tensor) -> torch.Tensor:
    """fn(x); when ``module.checkpointing`` is on (training, gradients enabled) its activations are
    recomputed in the backward pass instead of stored. Called inside forward, so that a compiled
    module traces the checkpoint and recomputes fused code."""
    if module.checkpointing and module.training and torch.is_grad_enabled():
        return checkpoint.checkpoint(fn, x, use_reentrant=False)
    return fn(x)


class EFFN(nn.Module):
    """Gated depthwise feed-forward network (Restormer's GDFN): (b, c, h, w) -> same.

    hidden = int(c * 2.66) is odd or not a multiple of 8 at every level (127, 255, 510, 1021 for
    C = 48), which sends the 1x1 convolutions to slow unaligned GEMM kernels. With ``align`` > 0
    the layer runs on weights zero-padded to a multiple of ``align`` hidden channels (the runtime
    switch ``effn_align``, default 8): the padded
    channels are gelu(0) * 0 = 0 and meet zero columns of project_out, so the function, the
    parameters and their gradients are exactly those of the unpadded layer.
    """

    def __init__(self, c: int, expansion: float = 2.66, linear_proj: bool = False):
        super().__init__()
        hidden = int(c * expansion)
        self.hidden = hidden
        self.project_in = Pointwise(c, 2 * hidden, bias=False, linear=linear_proj)
        self.dwconv = nn.Conv2d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden, bias=False)
        self.project_out = Pointwise(hidden, c, bias=False, linear=linear_proj)

    # With ``checkpointing`` on (activation_checkpointing: ffn), the layer's activations (its
    # 2 x hidden-channel maps, about a third of a block's) are recomputed in the backward pass.
    checkpointing = False

    def forward(self, x):
        return run_recomputed(self, self._forward, x)

    def _forward(self, x):
        h = self.hidden
        align = runtime.get().effn_align  # 0 runs the convolutions at their natural width
        hp = -(-h // align) * align if align else h
        if hp == h or self.project_in.linear:
            a, b = self._gate_inputs(self.project_in(x), self.dwconv.weight)
            return self.project_out(F.gelu(a) * b)
        # (2h, ...) weights -> (2, h, ...) -> zero rows appended to each half -> (2hp, ...)
        w_in = F.pad(self.project_in.proj.weight.view(2, h, -1), (0, 0, 0, hp - h)).view(2 * hp, -1, 1, 1)
        w_dw = F.pad(self.dwconv.weight.view(2, h, -1), (0, 0, 0, hp - h)).view(2 * hp, 1, 3, 3)
        w_out = F.pad(self.project_out.proj.weight, (0, 0, 0, 0, 0, hp - h))
        a, b = self._gate_inputs(F.conv2d(x, w_in), w_dw)
        return F.conv2d(F.gelu(a) * b, w_out)

    @staticmethod
    def _gate_inputs(t: torch.Tensor, w_dw: torch.Tensor):
        """The depthwise convolution of t (b, 2h, H, W), split into its two gate halves (b, h, H, W).
        Big maps convolve each half on its own (no concatenation; see DEPTHWISE_MAX_ELEMENTS)."""
        if t.numel() <= DEPTHWISE_MAX_ELEMENTS:
            return F.conv2d(t, w_dw, padding=1, groups=t.shape[1]).chunk(2, dim=1)
        a, b = t.chunk(2, dim=1)
        wa, wb = w_dw.chunk(2, dim=0)
        return depthwise_conv3x3(a, wa), depthwise_conv3x3(b, wb)


def init_dt_bias(n: int, dt_min=1e-3, dt_max=1e-1, floor=1e-4) -> torch.Tensor:
    """Bias such that softplus(bias) is log-uniform in [dt_min, dt_max] (floored)."""
    dt = torch.exp(torch.rand(n) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=floor)
    return dt + torch.log(-torch.expm1(-dt))  # inverse softplus


class SSMParams(nn.Module):
    """Parameters of K selective scans over ``d`` channels with rank R and state N.

    x_proj_weight (K, R+2N, d): input -> (dt_low_rank, B, C); dt_projs_weight (K, d, R),
    dt_projs_bias (K, d); A_logs (K*d, N) with S4D-real init; Ds (K*d,) = 1.
    """

    def __init__(self, K: int, d: int, rank: int, d_state: int):
        super().__init__()
        self.K, self.d, self.rank, self.d_state = K, d, rank, d_state
        self.x_proj_weight = nn.Parameter(torch.empty(K, rank + 2 * d_state, d))
        bound = d ** -0.5  # nn.Linear's default init for the x projection
        nn.init.uniform_(self.x_proj_weight, -bound, bound)
        self.dt_projs_weight = nn.Parameter(torch.empty(K, d, rank).uniform_(-rank ** -0.5, rank ** -0.5))
        self.dt_projs_bias = nn.Parameter(torch.stack([init_dt_bias(d) for _ in range(K)]))
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(K * d, 1)
        self.A_logs = nn.Parameter(torch.log(A))
        self.Ds = nn.Parameter(torch.ones(K * d))
        self.A_logs._no_weight_decay = True
        self.Ds._no_weight_decay = True

    def project(self, xs: torch.Tensor):
        """xs (b, K, d, L) -> delta (b, K, d, L), B (b, K, N, L), C (b, K, N, L).

        The original's formulation: a rank-R x projection, then the dt projection, per direction
        (used on sequences, and by the reference execution path on the planar maps).
        """
        x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, self.x_proj_weight)
        dt, B, C = torch.split(x_dbl, [self.rank, self.d_state, self.d_state], dim=2)
        return torch.einsum("bkrl,kdr->bkdl", dt, self.dt_projs_weight), B, C

    def project_map(self, x: torch.Tensor, directions: Optional[range] = None):
        """x (b, d, H, W), the same input for all K directions -> delta (b, K, d, H, W), B and C (b, K, N, H, W);
        with ``directions`` (a range of direction indices) only those: (b, len(directions), ...).

        The same function as :meth:`project`, executed as three 1x1 convolutions: the rank-R
        pair (dt_projs_weight[k] @ x_proj_weight[k, :R]) is multiplied out into one (d, d) matrix
        per direction first, so the low-rank detour (R = d/16 channels, which runs as badly shaped
        GEMMs) is never materialised. More multiply-adds, far fewer and better-shaped kernels.
        """
        b, _, H, W = x.shape
        R, N, d = self.rank, self.d_state, self.d  # d from the module: a constant when traced for ONNX
        rows = slice(None) if directions is None else slice(directions.start, directions.stop)
        x_proj, dt_proj = self.x_proj_weight[rows], self.dt_projs_weight[rows]
        K = x_proj.shape[0]
        with torch.autocast(x.device.type, enabled=False):  # the product of weights stays fp32
            w_delta = torch.bmm(dt_proj, x_proj[:, :R]).reshape(K * d, d, 1, 1)
        w_b = x_proj[:, R:R + N].reshape(K * N, d, 1, 1)
        w_c = x_proj[:, R + N:].reshape(K * N, d, 1, 1)
        return (F.conv2d(x, w_delta).view(b, K, d, H, W), F.conv2d(x, w_b).view(b, K, N, H, W),
                F.conv2d(x, w_c).view(b, K, N, H, W))

    def A(self):
        return -torch.exp(self.A_logs.float())


@contextlib.contextmanager
def original_projections(enabled: bool = True):
    """Compute the planar scans' projections the original's way (rank-R einsums per direction)
    instead of as 1x1 convolutions; same function, for the reference execution path. A shorthand
    for ``runtime.use(original_projections=enabled)``."""
    with runtime.use(original_projections=enabled):
        yield


class PlanarScan(nn.Module):
    """Selective scans over the pixels in K in {1, 2, 4} orders, summed: (b, d, h, w) -> same."""

    def __init__(self, d: int, rank: int, d_state: int = 16, directions: int = 4, backend: Optional[str] = None):
        super().__init__()
        if directions not in (1, 2, 4):
            raise ValueError(f"scan_directions must be 1, 2 or 4; got {directions}")
        self.ssm = SSMParams(directions, d, rank, d_state)
        self.backend = backend

    def forward(self, x):
        b, d, H, W = x.shape
        K = self.ssm.K
        A, D, bias = self.ssm.A(), self.ssm.Ds.float(), self.ssm.dt_projs_bias.float().view(-1)
        if runtime.get().original_projections:
            # The original's execution: project each direction's (materialised) sequence.
            delta, B, C = self.ssm.project(x.reshape(b, 1, d, H * W).expand(b, K, d, H * W))
            delta, B, C = delta.view(b, K, d, H, W), B.view(b, K, -1, H, W), C.view(b, K, -1, H, W)
            return ops.planar_omni_scan(x, delta, A, B, C, D, bias, backend=self.backend)
        # The projections act per pixel: computed in the natural layout, once per group of
        # directions (all K at once unless the inference_scan_directions switch splits them).
        out = None
        for dirs in self.direction_groups(x):
            delta, B, C = self.ssm.project_map(x, dirs)
            rows = slice(dirs.start * self.ssm.d, dirs.stop * self.ssm.d)  # a constant when traced for ONNX
            y = ops.planar_omni_scan(x, delta, A[rows], B, C, D[rows], bias[rows], backend=self.backend, directions=dirs)
            out = y if out is None else out + y
        return out

    def direction_groups(self, x: torch.Tensor) -> list:
        """The ranges of directions scanned together: all K, or groups of the runtime switch
        inference_scan_directions when no gradients are needed and the unfused path runs."""
        K, step = self.ssm.K, runtime.inference_scan_directions(x.device.type)
        if step >= K or torch.is_grad_enabled() or ops.takes_fused_path(x, range(K), self.backend):
            return [range(K)]
        return [range(k, k + step) for k in range(0, K, step)]


class ChannelScan(nn.Module):
    """Channel attention by a bidirectional scan over the pooled channels: (b, d, h, w) -> (b, d, 1, 1).

    The globally pooled map is a sequence of length d with one feature, scanned forward and
    backward (two groups of one channel each), summed, then LayerNorm over d.
    """

    def __init__(self, d: int, rank: int, d_state: int = 16, backend: Optional[str] = None):
        super().__init__()
        self.ssm = SSMParams(2, 1, rank, d_state)
        self.norm = nn.LayerNorm(d)
        self.backend = backend

    def forward(self, y):
        b, d = y.shape[:2]
        seq = y.mean((2, 3)).unsqueeze(1)                     # (b, 1, d)
        xs = torch.stack([seq, seq.flip(-1)], dim=1)          # (b, 2, 1, d)
        delta, B, C = self.ssm.project(xs)
        out = ops.selective_scan(xs.reshape(b, 2, d), delta.reshape(b, 2, d), self.ssm.A(), B, C,
                                 self.ssm.Ds.float(), self.ssm.dt_projs_bias.float().view(-1),
                                 delta_softplus=True, backend=self.backend)
        out = out[:, 0] + out[:, 1].flip(-1)                  # (b, d)
        return self.norm(out).view(b, d, 1, 1)


class LiftedChannelScan(nn.Module):
    """The deraining code's channel scan (the authors' Mamber32 / Mamber33): (b, d, h, w) -> (b, d, 1, 1).

    The pooled map, a length-d sequence of one feature, is lifted to ``inner`` features per
    position by a 1x1 convolution with bias (``lift``, 1 -> inner), scanned forward and backward
    with its own rank and state size (two groups of ``inner`` channels each), summed, brought back
    to one feature by another 1x1 convolution with bias (``merge``, inner -> 1), then LayerNorm
    over d. ``inner`` is 2 in Mamber33 and 4 in Mamber32; rank 6 and state 16 in both.
    """

    def __init__(self, d: int, inner: int, rank: int = 6, d_state: int = 16, backend: Optional[str] = None):
        super().__init__()
        self.inner = inner
        self.lift = nn.Conv2d(1, inner, 1, bias=True)
        self.ssm = SSMParams(2, inner, rank, d_state)
        # The authors initialise this scan's parameters differently from the planar ones:
        # dt weights and biases from a plain normal, A = -exp(randn), D = 1.
        with torch.no_grad():
            self.ssm.dt_projs_weight.normal_()
            self.ssm.dt_projs_bias.normal_()
            self.ssm.A_logs.normal_()
        self.merge = nn.Conv2d(inner, 1, 1, bias=True)
        self.norm = nn.LayerNorm(d)
        self.backend = backend

    def forward(self, y):
        b, d = y.shape[:2]
        e = self.inner
        pooled = y.mean((2, 3)).unsqueeze(1)                  # (b, 1, d)
        # 1x1 convolution 1 -> e along the sequence: (b, e, d)
        seq = pooled * self.lift.weight.view(1, e, 1) + self.lift.bias.view(1, e, 1)
        xs = torch.stack([seq, seq.flip(-1)], dim=1)          # (b, 2, e, d)
        delta, B, C = self.ssm.project(xs)
        # As the authors' code: A from fp32 A_logs, D and the dt bias as stored (the scan reads
        # them in fp32 or better either way; this matters only to float64 comparisons).
        out = ops.selective_scan(xs.reshape(b, 2 * e, d), delta.reshape(b, 2 * e, d), self.ssm.A(), B, C,
                                 self.ssm.Ds, self.ssm.dt_projs_bias.view(-1),
                                 delta_softplus=True, backend=self.backend).view(b, 2, e, d)
        out = out[:, 0] + out[:, 1].flip(-1)                  # (b, e, d)
        # 1x1 convolution e -> 1: (b, d)
        out = (out * self.merge.weight.view(1, e, 1)).sum(1) + self.merge.bias
        return self.norm(out).view(b, d, 1, 1)


# channel_scan choices: which channel scan an OSS module has and how its result is combined
# with the planar result y ("gate": y * c + y; "add": y + c). "sr" is the paper's and the authors'
# SR code's; "mamber33" / "mamber32" are the authors' deraining code's (docs/authors_code.md).
CHANNEL_SCANS = {
    "sr": dict(inner=None, combine="gate"),
    "mamber33": dict(inner=2, combine="gate"),
    "mamber32": dict(inner=4, combine="add"),
}


def channel_scan_kind(value: Union[bool, str, None]) -> Optional[str]:
    """channel_scan's value -> a key of CHANNEL_SCANS, or None for no channel scan
    (true = "sr", false / null / "none" = none)."""
    if value is True:
        return "sr"
    if value is False or value is None or value == "none":
        return None
    if value not in CHANNEL_SCANS:
        raise ValueError(f"VmambaIR: channel_scan must be true, false or one of {list(CHANNEL_SCANS) + ['none']}; "
                         f"got {value!r}. \"sr\" is the paper's channel scan (also the authors' SR code), "
                         f"\"mamber33\" / \"mamber32\" the authors' deraining code's.")
    return value


class OSSModule(nn.Module):
    """Omni selective scan module (expansion 1): (b, c, h, w) -> same."""

    def __init__(self, c: int, d_state: int = 16, scan_directions: int = 4, channel_scan: Union[bool, str] = True,
                 linear_proj: bool = False, scan_backend: Optional[str] = None):
        super().__init__()
        rank = math.ceil(c / 16)
        kind = channel_scan_kind(channel_scan)
        self.in_proj = Pointwise(c, 2 * c, bias=True, linear=linear_proj)
        self.dwconv = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=True)
        self.planar_scan = PlanarScan(c, rank, d_state, scan_directions, scan_backend)
        self.out_norm = LayerNorm2d(c)
        if kind is None:
            self.channel_scan = None
        elif kind == "sr":
            self.channel_scan = ChannelScan(c, rank, d_state, scan_backend)
        else:
            self.channel_scan = LiftedChannelScan(c, CHANNEL_SCANS[kind]["inner"], backend=scan_backend)
        self.channel_combine = CHANNEL_SCANS[kind]["combine"] if kind else None
        self.out_proj = Pointwise(c, c, bias=True, linear=linear_proj)

    def forward(self, x):
        x, z = self.in_proj(x).chunk(2, dim=1)
        x = F.silu(self.dwconv(x))
        y = self.out_norm(self.planar_scan(x)) * F.silu(z)
        if self.channel_scan is not None:
            c = self.channel_scan(y)
            y = y + c if self.channel_combine == "add" else y * c + y
        return self.out_proj(y)


class OSSBlock(nn.Module):
    """Pre-norm residual block: x += OSS(LN(x)); x += EFFN(LN(x)). (b, c, h, w) -> same."""

    def __init__(self, c: int, ffn_expansion_factor: float = 2.66, effn: bool = True, **oss_kwargs):
        super().__init__()
        self.norm1 = LayerNorm2d(c)
        self.oss = OSSModule(c, linear_proj=oss_kwargs.get("linear_proj", False),
                             **{k: v for k, v in oss_kwargs.items() if k != "linear_proj"})
        self.norm2 = LayerNorm2d(c) if effn else None
        self.ffn = EFFN(c, ffn_expansion_factor, oss_kwargs.get("linear_proj", False)) if effn else None

    # With ``checkpointing`` on, the block's activations are recomputed in the backward pass
    # instead of stored (less memory for big patches, ~30 % more compute). The checkpoint sits
    # inside forward so that a compiled block (compile_blocks) traces it and recomputes fused code.
    checkpointing = False

    def forward(self, x):
        return run_recomputed(self, self._residual_body, x)

    def _residual_body(self, x):
        x = x + self.oss(self.norm1(x))
        if self.ffn is not None:
            x = x + self.ffn(self.norm2(x))
        return x


CHECKPOINTING_MODES = ("none", "block", "ffn")


def checkpointing_mode(mode: Union[bool, str]) -> str:
    """activation_checkpointing's value -> one of CHECKPOINTING_MODES (true = "block", false = "none")."""
    if isinstance(mode, bool):
        return "block" if mode else "none"
    if mode not in CHECKPOINTING_MODES:
        raise ValueError(f"VmambaIR: activation_checkpointing must be true, false or one of "
                         f"{list(CHECKPOINTING_MODES)}; got {mode!r}. \"block\" recomputes whole OSS blocks "
                         f"(least memory), \"ffn\" only their feed-forward layers (less recompute).")
    return mode


def _stage(n: int, c: int, **kw) -> nn.Sequential:
    return nn.Sequential(*[OSSBlock(c, **kw) for _ in range(n)])


def _conv3(c_in: int, c_out: int, bias: bool) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, padding=1, bias=bias)


def sr_tail(c: int, scale: int, out_channels: int) -> nn.Sequential:
    """Pixel-shuffle upsampler (x2 stages, or one x3) then a 3x3 conv to the image, all with bias."""
    layers = []
    if scale == 3:
        layers += [_conv3(c, 9 * c, True), nn.PixelShuffle(3)]
    else:
        for _ in range(int(math.log2(scale))):
            layers += [_conv3(c, 4 * c, True), nn.PixelShuffle(2)]
    layers.append(_conv3(c, out_channels, True))
    return nn.Sequential(*layers)


@ARCH_REGISTRY.register()
class VmambaIR(nn.Module):
    """VmambaIR restoration network: (b, in_channels, H, W) -> (b, out_channels, H*scale, W*scale).

    Any H, W: the input is padded to a multiple of 8 inside and the output cropped back.

    Args:
        dim: level-1 width C; levels are C, 2C, 4C, 8C.
        num_blocks: OSS blocks per level N1..N4 (N4 at the latent level).
        num_refinement_blocks: M_F blocks at 2C after the decoder.
        scale: 1 for same-size restoration (residual tail), or 2, 3, 4, 8 for super-resolution.
        d_state: SSM state size N.
        scan_directions: planar scan directions (4 in the paper; 1 for ablation V1).
        channel_scan: which channel scan each OSS module has: true or "sr" (the paper's, as in the
            authors' SR code), "mamber33" / "mamber32" (the authors' deraining code: a lifted
            channel sequence, combined as y * c + y / y + c; docs/authors_code.md), false or
            "none" (ablations V1/V2).
        effn / linear_proj: the paper's ablations V3, V4.
        ablation: shortcut for the paper's Table-4 variants, "V1".."V4".
        scan_backend: force a selective-scan backend (None: automatic).
        activation_checkpointing: recompute activations in the backward pass to save memory:
            "block" (or true) each whole OSS block, "ffn" only each block's EFFN (its wide hidden
            maps: less saved, less recomputed), "none" (or false) nothing.
        identity_init: zero-initialise the last convolution, so that the untrained network returns
            its input (upsampled for SR): short training runs start from "do no harm".
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 3, dim: int = 48,
                 num_blocks: Sequence[int] = (4, 4, 6, 8), num_refinement_blocks: int = 2, scale: int = 1,
                 ffn_expansion_factor: float = 2.66, d_state: int = 16, scan_directions: int = 4,
                 channel_scan: Union[bool, str] = True, effn: bool = True, linear_proj: bool = False,
                 ablation: Optional[str] = None, scan_backend: Optional[str] = None,
                 activation_checkpointing: Union[bool, str] = False, identity_init: bool = False):
        super().__init__()
        if scale not in SR_SCALES:
            raise ValueError(f"VmambaIR: scale must be one of {SR_SCALES} (1 = same-size restoration, "
                             f"others = pixel-shuffle super-resolution); got {scale!r}.")
        if len(num_blocks) != 4:
            raise ValueError(f"VmambaIR: num_blocks needs 4 entries (levels 1-3 and the latent); got {list(num_blocks)}")
        if ablation is not None:
            if ablation not in ABLATIONS:
                raise ValueError(f"VmambaIR: ablation must be one of {sorted(ABLATIONS)} or null; got {ablation!r}")
            cfg = dict(scan_directions=scan_directions, channel_scan=channel_scan, effn=effn, linear_proj=linear_proj)
            cfg.update(ABLATIONS[ablation])
            scan_directions, channel_scan, effn, linear_proj = (cfg[k] for k in
                                                                ("scan_directions", "channel_scan", "effn", "linear_proj"))
        channel_scan_kind(channel_scan)  # a wrong value fails here, with the choices
        self.scale = scale
        self.residual = scale == 1 and in_channels == out_channels
        kw = dict(ffn_expansion_factor=ffn_expansion_factor, effn=effn, d_state=d_state,
                  scan_directions=scan_directions, channel_scan=channel_scan, linear_proj=linear_proj,
                  scan_backend=scan_backend)
        C = dim
        n1, n2, n3, n4 = num_blocks
        self.shallow = _conv3(in_channels, C, False)
        self.encoder1 = _stage(n1, C, **kw)
        self.down1 = nn.Sequential(_conv3(C, C // 2, False), nn.PixelUnshuffle(2))
        self.encoder2 = _stage(n2, 2 * C, **kw)
        self.down2 = nn.Sequential(_conv3(2 * C, C, False), nn.PixelUnshuffle(2))
        self.encoder3 = _stage(n3, 4 * C, **kw)
        self.down3 = nn.Sequential(_conv3(4 * C, 2 * C, False), nn.PixelUnshuffle(2))
        self.latent = _stage(n4, 8 * C, **kw)
        self.up3 = nn.Sequential(_conv3(8 * C, 16 * C, False), nn.PixelShuffle(2))
        self.reduce3 = nn.Conv2d(8 * C, 4 * C, 1, bias=False)
        self.decoder3 = _stage(n3, 4 * C, **kw)
        self.up2 = nn.Sequential(_conv3(4 * C, 8 * C, False), nn.PixelShuffle(2))
        self.reduce2 = nn.Conv2d(4 * C, 2 * C, 1, bias=False)
        self.decoder2 = _stage(n2, 2 * C, **kw)
        self.up1 = nn.Sequential(_conv3(2 * C, 4 * C, False), nn.PixelShuffle(2))
        self.decoder1 = _stage(n1, 2 * C, **kw)  # level 1 keeps the concatenated 2C width
        self.refinement = _stage(num_refinement_blocks, 2 * C, **kw)
        self.tail = _conv3(2 * C, out_channels, False) if scale == 1 else sr_tail(2 * C, scale, out_channels)
        self.set_activation_checkpointing(activation_checkpointing)
        if identity_init:
            last = self.tail if isinstance(self.tail, nn.Conv2d) else self.tail[-1]
            nn.init.zeros_(last.weight)
            if last.bias is not None:
                nn.init.zeros_(last.bias)

    def set_activation_checkpointing(self, mode: Union[bool, str]) -> None:
        """What to recompute in the backward pass (training only) instead of storing it: "block"
        (or True) each OSS block, "ffn" each block's EFFN, "none" (or False) nothing."""
        mode = checkpointing_mode(mode)
        for m in self.modules():
            if isinstance(m, OSSBlock):
                m.checkpointing = mode == "block"
            elif isinstance(m, EFFN):
                m.checkpointing = mode == "ffn"

    # Inference only: the SR tail runs on horizontal strips of at most this many input pixels.
    tail_strip_pixels = 128 * 1024

    def run_tail(self, feat: torch.Tensor) -> torch.Tensor:
        """The tail on features (b, 2C, H, W) -> (b, out, H*scale, W*scale).

        Without gradients and for SR, the tail runs strip by strip: its x4 intermediates (384
        channels at 2048^2, 96 at 4096^2 for a 1024^2 input) would otherwise dominate peak memory.
        The tail is local (3x3 convolutions and pixel shuffles), so each strip is computed with
        a halo of one input row per convolution and cropped back: exactly the whole-image result.
        """
        H, W = feat.shape[-2:]
        rows = max(1, self.tail_strip_pixels // W)
        if self.scale == 1 or torch.is_grad_enabled() or rows >= H:
            return self.tail(feat)
        # a 3x3 convolution at any of the tail's resolutions reaches at most one input row further
        halo = sum(isinstance(m, nn.Conv2d) for m in self.tail.modules())
        s = self.scale
        strips = []
        for r0 in range(0, H, rows):
            r1 = min(H, r0 + rows)
            a, b = max(0, r0 - halo), min(H, r1 + halo)
            strips.append(self.tail(feat[..., a:b, :])[..., (r0 - a) * s:(r1 - a) * s, :])
        return torch.cat(strips, dim=-2)

    def compile_blocks(self, **compile_kwargs) -> None:
        """torch.compile each OSS block in place (what ``train.compile`` does on CUDA).

        Blocks of one width share one compiled graph (parameters are graph inputs), so a network
        compiles about one graph per level width and mode instead of one huge graph: minutes less
        compile time, and the same fusions (LayerNorm with its permutes, the permuted scan copies,
        the gates). The convolutions between levels stay eager.
        """
        # train and eval graphs for each of the 4 widths, and a dynamic-shape graph per width
        # (the runtime switch recompile_limit, default 32)
        runtime.apply_compile_settings()
        # Resolve (import) the scan backends now: an import inside traced code breaks the graph.
        ops.available_backends(next(self.parameters()).device)
        for m in self.modules():
            if isinstance(m, OSSBlock):
                m.compile(**compile_kwargs)

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        H, W = inp.shape[-2:]
        x = pad_to_multiple(inp, 8)
        e1 = self.encoder1(self.shallow(x))
        e2 = self.encoder2(self.down1(e1))
        e3 = self.encoder3(self.down2(e2))
        lat = self.latent(self.down3(e3))
        d3 = self.decoder3(self.reduce3(torch.cat([self.up3(lat), e3], 1)))
        d2 = self.decoder2(self.reduce2(torch.cat([self.up2(d3), e2], 1)))
        d1 = self.decoder1(torch.cat([self.up1(d2), e1], 1))
        out = self.run_tail(self.refinement(d1))
        if self.scale == 1:
            out = out + x if self.residual else out
        else:
            out = out + F.interpolate(x, scale_factor=self.scale, mode="nearest")
        return out[..., : H * self.scale, : W * self.scale]
