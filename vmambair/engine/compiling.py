"""When and how the network runs compiled, so that a new image size does not recompile it.

torch.compile specialises a graph to the sizes it first sees; each new image size then compiles
again (on an H100, tens of seconds per size: validating three photos of three sizes took 80 s,
and the switch to a new progressive stage spent over 115 s before its first iteration). The
policy, used by the trainer, validation, ``test.py`` and ``restore.py --compile``:

- ``compile_network(net)`` compiles the network's blocks (``compile_blocks``) with
  ``dynamic=True``: sizes are symbols from the first compile, so one graph per block width serves
  every image size, patch size and batch. Marking only the blocks' input sizes dynamic is not
  enough: where a block's code breaks the graph (e.g. a scan backend dynamo cannot trace), the
  code after the break is compiled as a new frame whose sizes arrive as plain integers, which are
  static at first and recompile at the next size. A first input with H == W ties the two (the
  first non-square input compiles once more).
- Sizes of 1: torch specialises a size of 1, so the first batch of 1 (the recipe's last
  progressive stages) compiles the network again (85 s on an H100 at the switch to stage 5,
  ``benchmarks/data/recompile_h100.json``). The trainer therefore compiles that stage's graphs at
  the start (``compile_ahead``, one forward and backward of a random batch of the stage's size,
  leaving weights, gradients and random generators as they were), so the switch itself only
  records its CUDA graph: on an H100 (``bench_recompile.py --stage-list 4 5 --size-one ahead``,
  ``benchmarks/data/recompile_ahead_h100.json``) the batch-of-1 stage then began 1.1 s after its
  switch, with the eager loss (relative difference 7.5e-4); the compile ahead took 141.9 s, which
  the first stage's start now includes.
  ``compile_network(net, size_one=True)`` would instead turn on torch's size-oblivious treatment
  of dynamic sizes (``backed_size_oblivious``, a process-wide setting of torch.fx), with which
  graphs traced for a batch of 8 should also serve a batch of 1. It is off by default: in the one
  GPU run so far (H100, 2026-12-07, ``bench_recompile.py --stage-list 4 5 --size-one reuse``) the
  batch-2 stage compiled in 164.5 s with the same loss as eager (relative difference 6.6e-4), but
  the batch-1 stage had not finished its first iteration when the call's time ran out, roughly
  50 s after that stage began. ``scripts/bench/bench_recompile.py --size-one specialise ahead
  reuse`` compares the three.
  Never on the CPU: there the compiled CPU scan breaks the graph inside a block, and a
  (b, c, 1, 1) map crossing such a break is traced with symbolic 1s, which broadcasting rejects.
- ``validation_stance(net)`` runs compiled modules eagerly (``torch.compiler.set_stance
  ("force_eager")``): validation and testing restore a few images, often of different sizes,
  once each, where compiling cannot pay off; eager also leaves the training graphs untouched.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Sequence

from torch import nn
import torch
import torch.fx.experimental._config  # noqa: F401  (reuse_graphs_for_size_one)


def compiled_modules(net: nn.Module) -> list[str]:
    """Names of the submodules compiled in place with ``nn.Module.compile`` ("" for ``net``)."""
    return [name for name, m in net.named_modules() if getattr(m, "_compiled_call_impl", None) is not None]


def is_compiled(net: nn.Module) -> bool:
    """Whether ``net`` or any of its submodules was compiled in place."""
    return bool(compiled_modules(net))


def reuse_graphs_for_size_one() -> None:
    """Let graphs traced with dynamic sizes serve sizes of 1 too (no recompile for a batch of 1):
    torch.fx's ``backed_size_oblivious``, for the rest of the process."""
    torch.fx.experimental._config.backed_size_oblivious = True


def compile_network(net: nn.Module, size_one: bool = False, **compile_kwargs) -> nn.Module:
    """Compile ``net`` in place for sizes that change between calls (``dynamic=True`` unless
    ``compile_kwargs`` says otherwise): block by block through ``compile_blocks`` where the network
    has it (VmambaIR), else as a whole. The same compile serves training and evaluation (train and
    eval graphs are separate entries of one cache). With ``size_one`` and ``net`` on a CUDA device,
    the graphs should also serve sizes of 1 (``reuse_graphs_for_size_one``; not yet measured, so
    off by default). Returns ``net``."""
    kwargs = {"dynamic": True, **compile_kwargs}
    if size_one and kwargs["dynamic"] and any(p.is_cuda for p in net.parameters()):
        reuse_graphs_for_size_one()
    if hasattr(net, "compile_blocks"):
        net.compile_blocks(**kwargs)
    else:
        net.compile(**kwargs)
    return net


def compile_ahead(net: nn.Module, lq_shape: Sequence[int], autocast: Callable[[], Any]) -> None:
    """Compile ``net``'s training graphs for inputs of ``lq_shape`` (b, c, h, w) now, by one forward
    (inside ``autocast()``) and backward of a random batch, leaving no trace: the gradients are
    dropped (set to None) and the CPU and CUDA random number generators restored, so training
    goes on exactly as without it. The trainer calls it at the start for the first later
    progressive stage with a batch of 1, which torch.compile would otherwise trace anew at that
    stage's switch (it specialises sizes of 1); use the stage's own patch size, since the blocks'
    code branches on sizes (e.g. the fused scan's pixel limit) and each branch is its own graph."""
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    device = next(net.parameters()).device
    try:
        g = torch.Generator(device=device).manual_seed(0)
        lq = torch.rand(tuple(lq_shape), generator=g, device=device)
        with autocast():
            out = net(lq)
        out.float().mean().backward()
    finally:
        for q in net.parameters():
            q.grad = None
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)


@contextlib.contextmanager
def validation_stance(net: nn.Module) -> Iterator[None]:
    """Run ``net``'s compiled modules eagerly inside the block (a no-op for an uncompiled net):
    validation restores each image once, in sizes a compiled graph has not seen."""
    if is_compiled(net):
        with torch.compiler.set_stance("force_eager"):
            yield
    else:
        yield
