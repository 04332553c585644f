"""GPU kernel-time summaries from torch.profiler: where a step's GPU time goes.

Used by ``scripts/bench/bench_model.py --profile`` and by the trainer's ``logger.profile_iters``.
"""
from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

logger = logging.getLogger("vmambair")

_CATEGORIES = (("scan", ("scan", "selective", "omni")), ("all-reduce", ("nccl",)),
               ("norm", ("layer_norm", "layernorm")),
               ("conv/gemm", ("conv", "gemm", "cutlass", "cudnn", "xmma", "sm90", "implicit", "nchw", "nhwc")),
               ("copy/layout", ("copy", "cat", "transpose", "permute", "flip")),
               ("reduce", ("reduce",)), ("elementwise", ("elementwise", "vectorized", "unrolled")))


def kernel_category(name: str) -> str:
    """Coarse bucket of a CUDA kernel name (scan, all-reduce, norm, conv/gemm, copy/layout, ...)."""
    n = name.lower()
    for cat, keys in _CATEGORIES:
        if any(k in n for k in keys):
            return cat
    return "other"


def kernel_times(prof, iters: int) -> Dict[str, Tuple[float, int]]:
    """{kernel name: (GPU ms per iteration, launches)} of a finished ``torch.profiler.profile``."""
    kernels: Dict[str, List[float]] = {}
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            entry = kernels.setdefault(ev.name, [0.0, 0])
            entry[0] += ev.time_range.elapsed_us() / 1000 / iters
            entry[1] += 1
    return {k: (ms, int(n)) for k, (ms, n) in kernels.items()}


def summarize(prof, iters: int, wall_ms: float, label: str, top: int = 25, unit: str = "call") -> str:
    """Markdown summary of a profile that covered ``iters`` repetitions of ``wall_ms`` each.

    "GPU busy" is the summed kernel time over the wall time: well under 1 means the GPU waits for
    the host (launches, Python, data) or for other processes (all-reduce partners). Ends with
    :func:`copy_sources`'s table when the profile has copy or fill ops (ranked by CPU time when it
    has no GPU kernels).
    """
    kernels = kernel_times(prof, iters)
    groups: Dict[str, float] = {}
    for name, (ms, _) in kernels.items():
        g = kernel_category(name)
        groups[g] = groups.get(g, 0.0) + ms
    busy = sum(groups.values())
    launches = sum(n for _, n in kernels.values()) // max(iters, 1)
    lines = [f"### {label}", "",
             f"wall {wall_ms:.1f} ms per {unit} (profiled), GPU kernel time {busy:.1f} ms "
             f"(busy {busy / max(wall_ms, 1e-9):.2f}), kernel launches per {unit} {launches}", "",
             "| category | ms | share |", "|---|---|---|"]
    lines += [f"| {g} | {ms:.2f} | {ms / max(busy, 1e-9):.0%} |" for g, ms in sorted(groups.items(), key=lambda kv: -kv[1])]
    lines += ["", "| kernel | ms | launches |", "|---|---|---|"]
    for name, (ms, n) in sorted(kernels.items(), key=lambda kv: -kv[1][0])[:top]:
        lines.append(f"| `{name[:110]}` | {ms:.2f} | {n // max(iters, 1)} |")
    text = "\n".join(lines) + "\n"
    sources = copy_sources(prof, iters, cpu_time=not kernels)
    return text + (f"\nOps behind the copy and fill kernels ({label}):\n\n{sources}" if sources else "")


def stack_profiler_options(stacks: bool = True) -> dict:
    """Keyword arguments of ``torch.profiler.profile`` that record input shapes and, with
    ``stacks``, Python stacks (the verbose experimental config is what makes torch attach them to
    the ops). Stacks cost host time, which the profile's wall time then includes: a tiny
    3-iteration CPU training run with 2 iterations profiled took 44.1 s with stacks and shapes,
    7.0 s with shapes alone and 4.9 s with neither."""
    if not stacks:
        return dict(record_shapes=True)
    return dict(record_shapes=True, with_stack=True,
                experimental_config=torch._C._profiler._ExperimentalConfig(verbose=True))


_COPY_OPS = ("aten::copy_", "aten::clone", "aten::contiguous", "aten::to", "aten::_to_copy", "aten::fill_",
             "aten::zero_", "aten::zeros", "aten::cat", "aten::index", "aten::flip")


def copy_sources(prof, iters: int, top: int = 20, cpu_time: bool = False) -> str:
    """Markdown table of the CPU ops that launched copy / fill kernels, by their own GPU time.

    Each row is an aten op (copy_, clone, zeros, cat, ...) with its input shapes and the innermost
    frames of the Python stack that called it, when the profile recorded them
    (:func:`stack_profiler_options`): the place in our code (or in the compiled graph's generated
    code) to look at when "copy/layout" is large. Empty string when there is none.
    ``cpu_time``: rank by the ops' own CPU time instead (a profile without a GPU).
    """
    rows = []
    for ev in prof.key_averages(group_by_input_shape=True, group_by_stack_n=4):
        if ev.key not in _COPY_OPS:
            continue
        us = ev.self_cpu_time_total if cpu_time else getattr(ev, "self_device_time_total", 0.0)
        ms = us / 1000 / iters
        if ms <= 0:
            continue
        frames = [re.sub(r" (object )?at 0x[0-9a-f]+", "", f.split("/")[-1]) for f in (ev.stack or [])[:4]]
        stack = " < ".join(frames) or "-"
        rows.append((ms, ev.count // max(iters, 1), ev.key, str(ev.input_shapes)[:80], stack[:160]))
    if not rows:
        return ""
    lines = [f"| op | input shapes | called from | {'CPU' if cpu_time else 'GPU'} ms | calls |", "|---|---|---|---|---|"]
    for ms, n, key, shapes, stack in sorted(rows, reverse=True)[:top]:
        lines.append(f"| `{key}` | `{shapes}` | {stack} | {ms:.3f} | {n} |")
    return "\n".join(lines) + "\n"


def _where(frames: Sequence[dict]) -> str:
    """The innermost frame of an allocation's Python stack that is not PyTorch's own code (for a
    compiled graph: the generated code's file and line), as 'file.py:line name'."""
    def outside_torch(f):
        name = f.get("filename", "")
        return "/torch/" not in name and not name.startswith("<")
    frame = next((f for f in frames if outside_torch(f)), frames[0] if frames else None)
    if frame is None:
        return "-"
    return f"{Path(frame.get('filename', '?')).name}:{frame.get('line', '?')} {frame.get('name', '')}".strip()


def peak_allocations(events: Sequence[dict], top: int = 15) -> Tuple[int, List[Tuple[int, int, str]]]:
    """Replay one device's trace of the CUDA caching allocator (``torch.cuda.memory._snapshot()
    ["device_traces"][i]``, recorded with ``torch.cuda.memory._record_memory_history``) and find
    the moment the most bytes were allocated.

    Returns (peak bytes above what was allocated when recording began, the allocations alive at
    that moment grouped by where they were made: [(bytes, count, 'file.py:line name')], largest
    first, at most ``top``). An allocation counts from its 'alloc' event until its
    'free_completed' (the allocator's own bookkeeping of allocated bytes does the same).
    """
    def replay(stop: int) -> Tuple[Dict[int, dict], int, int]:
        """The allocations alive after events[:stop], and the peak total with its event index."""
        live: Dict[int, dict] = {}
        total = peak = peak_at = 0
        for i, ev in enumerate(events[:stop]):
            if ev.get("action") == "alloc":
                live[ev.get("addr")] = ev
                total += int(ev.get("size", 0))
                if total > peak:
                    peak, peak_at = total, i + 1
            elif ev.get("action") == "free_completed" and ev.get("addr") in live:
                total -= int(live.pop(ev.get("addr")).get("size", 0))
        return live, peak, peak_at

    # Two passes: find the peak, then replay up to it (no copy of the live set at every new peak).
    _, peak, peak_at = replay(len(events))
    groups: Dict[str, List[int]] = {}
    for ev in replay(peak_at)[0].values():
        size, where = int(ev.get("size", 0)), _where(ev.get("frames") or [])
        g = groups.setdefault(where, [0, 0])
        g[0] += size
        g[1] += 1
    rows = sorted(((b, n, w) for w, (b, n) in groups.items()), reverse=True)[:top]
    return peak, rows


class IterationProfiler:
    """Profiles training iterations ``first..last`` with torch.profiler and writes :func:`summarize`'s
    Markdown to ``path`` (written whole, atomically). ``span=None``: does nothing.

    The trainer calls ``step_begins(i)`` once iteration i's batch has arrived and ``step_ends(i)``
    after its optimizer step; the wall time runs from the first's begin to the last's end, so it
    includes the data waits of the iterations after the first.
    """

    def __init__(self, span: Optional[Sequence[int]], path: Path, label: str):
        self.first, self.last = (span[0], span[1]) if span else (None, None)
        self.path, self.label = Path(path), label
        self._prof = None
        self._t0 = 0.0

    def step_begins(self, iteration: int) -> None:
        if iteration != self.first:
            return
        from torch.profiler import ProfilerActivity, profile
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        # Shapes but no Python stacks: stacks would slow the profiled iterations several times over.
        self._prof = profile(activities=activities, **stack_profiler_options(stacks=False))
        self._prof.__enter__()
        self._t0 = time.perf_counter()

    def step_ends(self, iteration: int) -> None:
        if self._prof is None or iteration != self.last:
            return
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        iters = self.last - self.first + 1
        wall_ms = (time.perf_counter() - self._t0) * 1000 / iters
        self._prof.__exit__(None, None, None)
        text = summarize(self._prof, iters, wall_ms, f"{self.label}: iterations {self.first}-{self.last}",
                         unit="iteration")
        self._prof = None
        from ..utils.fileio import atomic_write_bytes
        atomic_write_bytes(text.encode(), self.path)
        logger.info(f"Profile of iterations {self.first}-{self.last} written to {self.path}.")
