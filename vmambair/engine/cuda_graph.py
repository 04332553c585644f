"""CUDA graphs: record a whole forward pass (or training step) once, then replay it with one launch.

A VmambaIR forward pass is thousands of small kernels; below about 512x512 pixels the GPU waits on
Python and the launch queue, not on arithmetic (benchmarks/data/profile_*.json: a 256x256 deraining pass
keeps the GPU busy a quarter of its wall time). A CUDA graph replays the recorded kernels without
going back to Python. The price: the input and output live in fixed buffers, one graph is recorded
per input shape (recording runs the function a few times), and each graph keeps the memory of its
intermediates reserved while it lives.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Hashable, List, NamedTuple, Optional, Sequence, Tuple

import torch


class GraphRecordingError(RuntimeError):
    """``fn`` ran eagerly but could not be recorded into a CUDA graph."""


def capture(fn: Callable[[], object], warmup: int = 3) -> Tuple[torch.cuda.CUDAGraph, object]:
    """Record ``fn()`` (which reads and writes only fixed tensors) into a CUDA graph.

    ``fn`` first runs ``warmup`` times on a side stream, so that lazy work (cuDNN algorithm choice,
    torch.compile, allocator growth, optimizer state) happens outside the recording. Returns the
    graph and what ``fn`` returned during the recording (tensors that every ``graph.replay()``
    rewrites in place). Raises :class:`GraphRecordingError` when the recording fails.
    """
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            result = fn()
    except torch.cuda.OutOfMemoryError:  # not a recording problem: callers retry smaller
        raise
    except RuntimeError as err:
        raise GraphRecordingError(
            f"recording a CUDA graph failed ({type(err).__name__}: {' '.join(str(err).split())[:300]}). A graph "
            "can hold only GPU work with fixed shapes: host synchronisation (.item(), .cpu(), printing a tensor), "
            "shapes that depend on values, or CPU tensors in the recorded code prevent it.") from err
    return graph, result


class Recorded(NamedTuple):
    """One recorded graph: replaying it reads ``inputs`` and rewrites ``output`` (and ``grads``)."""
    graph: torch.cuda.CUDAGraph
    inputs: List[torch.Tensor]
    output: torch.Tensor
    grads: Optional[list] = None


class _GraphCache:
    """Recorded graphs by input key; at most ``max_graphs``, least recently used dropped first
    (dropping a graph releases the memory it holds)."""

    def __init__(self, max_graphs: int):
        if max_graphs < 1:
            raise ValueError(f"{type(self).__name__}: max_graphs must be >= 1, got {max_graphs}")
        self.max_graphs = max_graphs
        self._graphs: "OrderedDict[Hashable, Recorded]" = OrderedDict()

    def _lookup(self, key: Hashable, inputs: Sequence[torch.Tensor],
                record: Callable[[List[torch.Tensor]], Recorded]) -> Recorded:
        """The graph for ``key`` with ``inputs`` in its input buffers: ``record(copies of inputs)``
        when the key is new, else the kept graph with ``inputs`` copied in."""
        entry = self._graphs.get(key)
        if entry is None:
            while len(self._graphs) >= self.max_graphs:
                self._graphs.popitem(last=False)
            entry = self._graphs[key] = record([t.clone() for t in inputs])
        else:
            self._graphs.move_to_end(key)
            for buffer, t in zip(entry.inputs, inputs):
                buffer.copy_(t)
        return entry

    def clear(self) -> None:
        """Drop every recorded graph (and the memory it holds)."""
        self._graphs.clear()


class GraphedForward(_GraphCache):
    """Inference through CUDA graphs: ``GraphedForward(net)(x)`` equals ``net(x)`` under no_grad.

    The first call with a new input shape (and dtype, autocast setting) records a graph of
    ``net``; later calls copy ``x`` into the graph's input buffer and replay it. At most
    ``max_graphs`` shapes are kept (least recently used dropped first, releasing its memory).
    Meant for many inputs of a few sizes (a test set, a folder of photos from one camera, a
    video); for one-off sizes, recording costs ``warmup + 1`` extra passes.

    Args:
        net: CUDA module or function, (b, c, h, w) -> tensor.
        max_graphs: shapes kept at once.
        warmup: un-recorded runs before recording (see :func:`capture`).
    """

    def __init__(self, net: Callable[[torch.Tensor], torch.Tensor], max_graphs: int = 4, warmup: int = 2):
        super().__init__(max_graphs)
        self.net, self.warmup = net, warmup

    def _key(self, x: torch.Tensor) -> Hashable:
        if hasattr(torch, "get_autocast_dtype"):  # torch >= 2.4
            amp, dtype = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
        else:
            amp, dtype = torch.is_autocast_enabled(), torch.get_autocast_gpu_dtype()
        return (tuple(x.shape), x.dtype, x.device, amp, dtype if amp else None)

    def _record(self, inputs: List[torch.Tensor]) -> Recorded:
        graph, output = capture(lambda: self.net(inputs[0]), self.warmup)
        return Recorded(graph, inputs, output)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cuda":
            raise ValueError(f"GraphedForward needs a CUDA input; got a tensor on {x.device}.")
        entry = self._lookup(self._key(x), [x], self._record)
        entry.graph.replay()
        return entry.output.clone()  # the next replay overwrites it

    @property
    def shapes(self) -> list:
        """The input shapes with a recorded graph, least recently used first."""
        return [k[0] for k in self._graphs]


def eager_loss_and_grad(loss_fn: Callable[..., torch.Tensor], params,
                        loss_multiplier: Optional[torch.Tensor] = None) -> Callable[..., torch.Tensor]:
    """The eager counterpart of :class:`GraphedLossAndGrad`, with the same call and result:
    ``(*batch) -> loss_fn(*batch)``, leaving its gradient (fresh, not added) in every ``p.grad``
    (the gradient of ``loss * loss_multiplier`` when a multiplier tensor is given)."""
    params = [p for p in params if p.requires_grad]

    def step(*batch: torch.Tensor) -> torch.Tensor:
        for p in params:
            p.grad = None  # the backward then writes fresh gradients instead of adding to old ones
        loss = loss_fn(*batch)
        (loss if loss_multiplier is None else loss * loss_multiplier).backward()
        return loss
    return step


def make_loss_and_grad(loss_fn: Callable[..., torch.Tensor], params, graphed: bool) -> Callable[..., torch.Tensor]:
    """:class:`GraphedLossAndGrad` when ``graphed``, else :func:`eager_loss_and_grad`."""
    return GraphedLossAndGrad(loss_fn, params) if graphed else eager_loss_and_grad(loss_fn, params)


class GraphedLossAndGrad(_GraphCache):
    """A training step's forward, loss and backward as one CUDA graph per batch shape.

    ``GraphedLossAndGrad(loss_fn, params)(*batch)`` returns ``loss_fn(*batch)`` and leaves its
    gradient in every ``p.grad``, as ``loss.backward()`` from zeroed gradients would. The
    optimizer, gradient clipping, all-reduce and EMA stay outside the graph (each is one or a
    few launches), so learning-rate schedules, logging and DDP work unchanged.

    Rules for the caller: do not zero or replace ``p.grad`` between calls (each replay rewrites the
    tensors its recording allocated), and clone the returned loss to keep it (the next call
    rewrites it). A new batch shape (a progressive-training stage) records a new graph; at most
    ``max_graphs`` are kept, least recently used dropped first.

    With ``flat_grads``, the graph also copies every gradient into one flat fp32 buffer,
    ``flat_grad``, and each ``p.grad`` is a view of it: a data-parallel all-reduce is then one
    collective on one tensor, not a concatenation, a collective and a copy per parameter (and
    gradient accumulation sums one tensor).

    With ``loss_multiplier`` (a 0-dim tensor on the device), the recorded backward is of
    ``loss * loss_multiplier``: the caller rewrites the multiplier in place between replays
    (1/K for K accumulated micro-batches, times the fp16 loss scale). The returned loss is
    ``loss_fn``'s, unmultiplied. The graph only writes its own buffers: a step the caller skips
    (non-finite gradients) leaves nothing behind that the next replay would read.

    Args:
        loss_fn: ``(*batch) -> 0-dim loss``; runs its own autocast. Must read nothing but its
            arguments and the parameters.
        params: the parameters whose gradients are wanted.
        warmup: eager forward/backward passes before recording (compiles, picks algorithms).
        max_graphs: batch shapes kept at once.
        flat_grads: gradients as views of ``flat_grad`` (for DDP and accumulation).
        loss_multiplier: 0-dim tensor the backward's loss is multiplied by (read at each replay).
    """

    def __init__(self, loss_fn: Callable[..., torch.Tensor], params, warmup: int = 3, max_graphs: int = 1,
                 flat_grads: bool = False, loss_multiplier: Optional[torch.Tensor] = None):
        super().__init__(max_graphs)
        self.loss_fn, self.warmup = loss_fn, warmup
        self.loss_multiplier = loss_multiplier
        self.params = [p for p in params if p.requires_grad]
        self._active = None  # the key whose gradient tensors the parameters hold
        self.flat_grad: Optional[torch.Tensor] = None
        if flat_grads and self.params:
            # Zeroed once: slots of parameters that get no gradient stay zero on every rank.
            self.flat_grad = torch.zeros(sum(p.numel() for p in self.params), dtype=torch.float32,
                                         device=self.params[0].device)
            self._flat_views = [v.view_as(p) for v, p in
                                zip(self.flat_grad.split([p.numel() for p in self.params]), self.params)]

    def _record(self, inputs: List[torch.Tensor]) -> Recorded:
        # Gradients start as None, so the recorded backward allocates them in the graph's pool and
        # writes them (does not add): each replay rewrites the same tensors.
        step = eager_loss_and_grad(self.loss_fn, self.params, self.loss_multiplier)
        if self.flat_grad is None:
            graph, loss = capture(lambda: step(*inputs), self.warmup)
            return Recorded(graph, inputs, loss, [p.grad for p in self.params])

        def step_to_flat():
            loss = step(*inputs)
            pairs = [(v, p.grad) for v, p in zip(self._flat_views, self.params) if p.grad is not None]
            if pairs:
                torch._foreach_copy_([v for v, _ in pairs], [g for _, g in pairs])
            return loss
        graph, loss = capture(step_to_flat, self.warmup)
        # A parameter without a gradient keeps None, as after an eager backward.
        return Recorded(graph, inputs, loss,
                        [v if p.grad is not None else None for v, p in zip(self._flat_views, self.params)])

    def __call__(self, *batch: torch.Tensor) -> torch.Tensor:
        key = tuple((tuple(t.shape), t.dtype, t.device) for t in batch)
        entry = self._lookup(key, batch, self._record)
        if self._active != key:
            for p, g in zip(self.params, entry.grads):
                p.grad = g
            self._active = key
        entry.graph.replay()
        return entry.output
