"""When and how the network runs compiled, so that a new image size does not recompile it.

torch.compile specialises a graph to the sizes it first sees; each new image size then compiles
again (on an H100, tens of seconds per size: validating three photos of three sizes took 80 s,
and the switch to a new progressive stage spent over 115 s before its first iteration). The
policy, used by the trainer, validation, ``test.py`` and ``restore.py --compile``:

- ``compile_network(net, training=...)`` compiles the network's blocks (``compile_blocks``) and
  marks the sizes that change between calls as dynamic on the inputs of the compiled blocks:
  height and width always (any image or patch size), and the batch too when training (the
  progressive stages change patch size and batch together). One graph per block width then
  serves every size; a size of 1 (batch 1) may still compile once more, since torch specialises
  sizes 0 and 1.
- ``validation_stance(net)`` runs compiled modules eagerly (``torch.compiler.set_stance
  ("force_eager")``): validation and testing restore a few images, often of different sizes,
  once each, where compiling cannot pay off; eager also leaves the training graphs untouched.

Marks are applied with ``torch._dynamo.maybe_mark_dynamic`` (a hint: a dimension the graph needs
constant is specialised instead of raising) by forward pre-hooks on the *parents* of the compiled
blocks, which run eagerly (a hook of the compiled block itself would run inside the compiled code).
"""
from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch
from torch import nn

SPATIAL_DIMS = (2, 3)          # (b, c, H, W): height and width
TRAINING_DIMS = (0, 2, 3)      # batch, height and width
_HOOK_ATTR = "_vmambair_dynamic_dims_hook"


def compiled_modules(net: nn.Module) -> list[str]:
    """Names of the submodules compiled in place with ``nn.Module.compile`` ("" for ``net``)."""
    return [name for name, m in net.named_modules() if getattr(m, "_compiled_call_impl", None) is not None]


def is_compiled(net: nn.Module) -> bool:
    """Whether ``net`` or any of its submodules was compiled in place."""
    return bool(compiled_modules(net))


def mark_dims_dynamic(tensors: Iterable, dims: tuple) -> int:
    """Mark ``dims`` of every 4-D tensor in ``tensors`` as dynamic for torch.compile; returns how
    many tensors were marked."""
    marked = 0
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.dim() == 4:
            torch._dynamo.maybe_mark_dynamic(t, list(dims))
            marked += 1
    return marked


def mark_dynamic_inputs(net: nn.Module, dims: tuple = SPATIAL_DIMS) -> int:
    """Register forward pre-hooks on the parents of ``net``'s compiled submodules that mark
    ``dims`` of their 4-D tensor inputs dynamic (again with new ``dims`` if called again).

    Returns the number of parents hooked. A network compiled as a whole (no eager parent) gets no
    hook: pass ``dynamic=True`` to its compile instead.
    """
    modules = dict(net.named_modules())
    parents = {name.rpartition(".")[0] for name in compiled_modules(net) if name}
    for name in sorted(parents):
        parent = modules[name]
        old = getattr(parent, _HOOK_ATTR, None)
        if old is not None:
            old.remove()

        def hook(module, args, _dims=tuple(dims)):
            mark_dims_dynamic(args, _dims)

        setattr(parent, _HOOK_ATTR, parent.register_forward_pre_hook(hook))
    return len(parents)


def compile_network(net: nn.Module, *, training: bool, **compile_kwargs) -> nn.Module:
    """Compile ``net`` in place for sizes that change between calls.

    Networks with ``compile_blocks`` (VmambaIR) compile block by block, and the inputs of the
    blocks get batch/height/width (``training``) or height/width (inference) marked dynamic;
    other networks go through ``nn.Module.compile(dynamic=True)``. Returns ``net``.
    """
    if hasattr(net, "compile_blocks"):
        net.compile_blocks(**compile_kwargs)
        mark_dynamic_inputs(net, TRAINING_DIMS if training else SPATIAL_DIMS)
    else:
        net.compile(**{"dynamic": True, **compile_kwargs})
    return net


@contextlib.contextmanager
def validation_stance(net: nn.Module) -> Iterator[None]:
    """Run ``net``'s compiled modules eagerly inside the block (a no-op for an uncompiled net):
    validation restores each image once, in sizes a compiled graph has not seen."""
    if is_compiled(net):
        with torch.compiler.set_stance("force_eager"):
            yield
    else:
        yield
