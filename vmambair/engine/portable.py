"""Self-describing weights: safetensors files that say which network they belong to.

A ``.safetensors`` file written by vmambair carries, besides its tensors, string metadata from
which the network can be rebuilt without any options file:

==================  ==========================================================================
``format``          ``vmambair``
``format_version``  ``1`` (this layout)
``architecture``    the ``ARCH_REGISTRY`` name, e.g. ``VmambaIR``
``network_g``       the full network arguments as JSON (``{"type": "VmambaIR", "dim": 48, ...}``)
``scale``           output size / input size, e.g. ``4``
``task``            a short label, e.g. ``derain``, ``sr_x4``, ``realsr_x4``
``vmambair_version`` the framework version that wrote the file
``source``          where the weights come from (a file name, or ``training``)
``experiment``      the training run's name (training only)
``iteration``       the training iteration (training only)
``key``             which entry of the source was exported (``params``/``params_ema``), if any
==================  ==========================================================================

Only plain data (JSON strings, numbers, lists, booleans, null) is stored and read back: nothing
in a file is ever executed, and loading builds only classes already in ``ARCH_REGISTRY``.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch

from ..config import OptionsError, build_from_spec, load_options, registry
from ..utils.fileio import CheckpointError
from .checkpoint import load_network_weights, read_weights, save_weights  # noqa: F401  (public here too)

FORMAT = "vmambair"
FORMAT_VERSION = "1"
# Arguments that choose how a network executes, not what it computes: a file written on a GPU
# machine with ``scan_backend: cuda`` must still load on a CPU, and inference never recomputes.
EXECUTION_ONLY_ARGS = ("scan_backend", "activation_checkpointing")
# Which entry of a file that holds several state dicts (training's ``params.*`` / ``params_ema.*``)
# load_model uses when neither the caller nor the metadata says: the EMA weights if present.
DEFAULT_KEYS = ("params_ema", "params")

PathLike = Union[str, os.PathLike]


def framework_version() -> str:
    """vmambair's version, read from the already imported package (or the installed metadata)."""
    version = getattr(sys.modules.get("vmambair"), "__version__", None)
    if version:
        return str(version)
    try:
        return importlib.metadata.version("vmambair")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "unknown"


def _plain_json(value: Any, where: str) -> str:
    """JSON text of ``value`` if it is plain data (dict/list/str/number/bool/None), else an error."""
    def plain(v):
        if isinstance(v, Mapping):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        raise CheckpointError(f"{where} holds {type(v).__name__} value {v!r}; weight metadata may only hold "
                              f"plain data (numbers, strings, booleans, lists, mappings, null).")
    return json.dumps(plain(value), sort_keys=True)


def task_label(scale: int) -> str:
    """Default task label for a network of ``scale``: ``restoration`` (1) or ``sr_x<scale>``."""
    return "restoration" if int(scale) == 1 else f"sr_x{int(scale)}"


def guess_task(name: str, scale: int) -> str:
    """A task label from an experiment or options-file name (``VmambaIR_realsr_x4_psnr`` ->
    ``realsr_x4``, ``derain`` -> ``derain``), else :func:`task_label`."""
    low, scale = str(name).lower(), int(scale)
    if "quickstart" in low:
        return "quickstart"
    if "derain" in low:
        return "derain"
    if "realsr" in low and scale > 1:
        return f"realsr_x{scale}"
    if "sr" in low.replace("_", " ").split() or f"sr_x{scale}" in low:
        return f"sr_x{scale}" if scale > 1 else task_label(scale)
    return task_label(scale)


def training_metadata(opt: Any, net_name: str, iteration: int) -> Dict[str, str]:
    """Metadata of the weights training writes for network ``net_name`` (``net_g`` or ``net_d``)
    of options ``opt`` (a :class:`vmambair.config.Options`) at ``iteration``."""
    spec = opt.network_g if net_name == "net_g" else getattr(opt, "network_" + net_name.split("_", 1)[-1], None)
    if not spec:
        raise CheckpointError(f"No network options for '{net_name}' in the options of '{opt.name}'.")
    return weights_metadata(spec, scale=opt.scale if net_name == "net_g" else 1,
                            task=guess_task(opt.name, opt.scale), source="training",
                            experiment=opt.name, iteration=iteration)


def weights_metadata(network_g: Mapping[str, Any], *, scale: int, task: str, source: str,
                     experiment: Optional[str] = None, iteration: Optional[int] = None,
                     key: Optional[str] = None) -> Dict[str, str]:
    """The metadata that makes a safetensors file self-describing (see the module docstring).

    Args:
        network_g: the network spec ``{'type': <ARCH_REGISTRY name>, **constructor arguments}``.
        scale: output size / input size (1 for same-size restoration).
        task: short label of what the network restores (e.g. ``derain``; see :func:`task_label`).
        source: where the weights come from (file name, ``training``...).
        experiment, iteration: the training run and iteration, when the weights come from training.
        key: the entry of the source that was written (``params`` / ``params_ema``), if any.

    Returns:
        ``{name: string}`` (safetensors metadata is string to string).

    Raises:
        CheckpointError: ``network_g`` without a ``type`` or holding values that are not plain data.
    """
    if not isinstance(network_g, Mapping) or not isinstance(network_g.get("type"), str):
        raise CheckpointError(f"network_g must be a mapping with a 'type' (the architecture name); got {network_g!r}.")
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": network_g["type"],
        "network_g": _plain_json(dict(network_g), "network_g"),
        "scale": str(int(scale)),
        "task": str(task),
        "vmambair_version": framework_version(),
        "source": str(source),
    }
    if experiment is not None:
        meta["experiment"] = str(experiment)
    if iteration is not None:
        meta["iteration"] = str(int(iteration))
    if key is not None:
        meta["key"] = str(key)
    return meta


def describes_network(metadata: Optional[Mapping[str, str]]) -> bool:
    """Whether ``metadata`` carries a network description (``network_g``)."""
    return bool(metadata) and "network_g" in metadata


def network_spec(metadata: Mapping[str, str], origin: str = "the metadata") -> Dict[str, Any]:
    """The ``network_g`` spec stored in ``metadata``, checked to be plain data naming a registered arch."""
    try:
        spec = json.loads(metadata["network_g"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{origin}: the metadata entry 'network_g' is missing or not JSON ({err}).") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
        raise CheckpointError(f"{origin}: metadata 'network_g' must be a JSON object with a 'type'; got {spec!r}.")
    archs = registry("arch")
    if spec["type"] not in archs:
        raise CheckpointError(f"{origin}: the metadata names architecture {spec['type']!r}, which is not registered "
                              f"(known: {', '.join(sorted(archs))}).")
    return spec


def build_from_metadata(metadata: Mapping[str, str], origin: str = "the metadata") -> torch.nn.Module:
    """Build the (untrained) network that ``metadata`` describes.

    The execution-only arguments (``EXECUTION_ONLY_ARGS``) are left at their defaults, so a file
    written with a forced GPU scan backend still builds on a CPU.

    Raises:
        CheckpointError: no or invalid ``network_g``, or arguments the network rejects.
    """
    spec = network_spec(metadata, origin)
    spec = {k: v for k, v in spec.items() if k not in EXECUTION_ONLY_ARGS}
    try:
        return build_from_spec("arch", spec)
    except (OptionsError, TypeError, ValueError) as err:
        raise CheckpointError(f"{origin}: the network its metadata describes cannot be built: {err}") from None


def select_entry(tensors: Dict[str, torch.Tensor], key: Optional[str]) -> Dict[str, torch.Tensor]:
    """The state dict of one entry of a file holding ``<entry>.<param>`` tensors (training's layout).

    ``key`` None: the first of ``DEFAULT_KEYS`` that is present, else the tensors as they are.
    A ``module.`` prefix (DDP) is removed.
    """
    prefixes = [key] if key else list(DEFAULT_KEYS)
    for p in prefixes:
        if any(k.startswith(p + ".") for k in tensors):
            tensors = {k[len(p) + 1:]: v for k, v in tensors.items() if k.startswith(p + ".")}
            break
    if tensors and all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def check_match(net: torch.nn.Module, state: Mapping[str, torch.Tensor], origin: str, described_by: str) -> None:
    """Refuse ``state`` unless it has exactly ``net``'s keys and shapes; the error names the first mismatch."""
    expected = net.state_dict()
    for k, v in expected.items():
        if k not in state:
            raise CheckpointError(f"{origin} does not match the network {described_by}: first mismatching key "
                                  f"'{k}' is missing from the file (network expects shape {tuple(v.shape)}).")
        if tuple(state[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{origin} does not match the network {described_by}: first mismatching key "
                                  f"'{k}' has shape {tuple(state[k].shape)} in the file, {tuple(v.shape)} in the network.")
    extra = [k for k in state if k not in expected]
    if extra:
        raise CheckpointError(f"{origin} does not match the network {described_by}: first mismatching key "
                              f"'{extra[0]}' is in the file but not in the network ({len(extra)} such key(s)).")


def _options_spec(options: Union[PathLike, Mapping[str, Any]]) -> Tuple[Dict[str, Any], str]:
    """(network_g spec, description) from an options file path or a network_g mapping."""
    if isinstance(options, Mapping):
        return dict(options), "given by the options"
    try:
        opt = load_options(options, ["datasets={}"], is_train=False)
    except OptionsError as err:
        raise CheckpointError(f"error in options ({options}): {err}") from None
    return dict(opt.network_g), f"of options file '{options}'"


def load_model(path: PathLike, device: Union[str, torch.device, None] = None,
               options: Union[PathLike, Mapping[str, Any], None] = None,
               key: Optional[str] = None) -> torch.nn.Module:
    """Load a trained network, ready for inference.

    Args:
        path: ``.safetensors`` (self-describing when written by vmambair) or ``.pth`` (read with
            ``torch.load(weights_only=True)``; basicsr layout ``{'params': sd, 'params_ema': sd}``
            or a flat state dict).
        device: where to put the network (default: CPU).
        options: an options file (its ``network_g``) or a ``network_g`` mapping; needed for files
            without metadata, and used instead of the metadata when given.
        key: entry to load from files holding several (``params`` / ``params_ema``); default: the
            metadata's ``key``, else ``params_ema`` if present, else ``params``.

    Returns:
        The network in eval mode on ``device``, parameters not requiring grad. Its ``scale`` (from
        the metadata or the network) is set as attribute ``vmambair_scale`` and the metadata
        (None for ``.pth``) as ``vmambair_metadata``.

    Raises:
        CheckpointError: missing, corrupt or unsafe file; no metadata and no options (the
            message says how to fix it); weights that do not match the network (the message
            names the first mismatching key).
    """
    path = Path(path)
    origin = f"Weight file '{path}'"
    if path.suffix == ".safetensors":
        tensors, metadata = read_weights(path)
    else:  # the entry asked for, else params_ema / params / state_dict / model, else the file itself
        tensors, metadata = load_network_weights(path, key=key or DEFAULT_KEYS[0]), None
    if options is not None:
        spec, described_by = _options_spec(options)
        try:
            net = build_from_spec("arch", {k: v for k, v in spec.items() if k not in EXECUTION_ONLY_ARGS})
        except (OptionsError, TypeError, ValueError, KeyError) as err:
            raise CheckpointError(f"The network {described_by} cannot be built: {err}") from None
    elif describes_network(metadata):
        net = build_from_metadata(metadata, origin)
        described_by = f"its metadata describes ({metadata.get('architecture', '?')})"
    else:
        raise CheckpointError(
            f"{origin} does not say which network it holds (no vmambair metadata); pass the options file it "
            f"was trained with (restore.py -opt <options.yml>, or load_model(path, options='<options.yml>')), or "
            f"re-export it with metadata: python scripts/export.py {path} -opt <options.yml>.")
    state = select_entry(dict(tensors), key or (metadata or {}).get("key"))
    check_match(net, state, origin, described_by)
    net.load_state_dict(state, strict=True)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    scale = int(metadata["scale"]) if metadata and "scale" in metadata else int(getattr(net, "scale", 1))
    net.vmambair_scale = scale
    net.vmambair_metadata = metadata
    return net.to(torch.device(device) if device is not None else torch.device("cpu"))
