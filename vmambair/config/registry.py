"""Registries: what a ``{type: Name, **kwargs}`` section may name, checked against the class.

Each package registers its own entries where it defines them (basicsr's registries for archs,
losses, metrics, datasets and models; ``SCHEDULER_REGISTRY`` here for learning-rate schedulers).
Importing any ``vmambair`` module first runs ``vmambair/__init__.py``, which imports every
package, so the tables are complete by the time options are validated; this module never
imports a layer above it.
"""
from __future__ import annotations

import inspect
import typing
from typing import Any, Dict, Union

from .. import compat  # noqa: F401  (before basicsr)
from basicsr.utils.registry import (ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY,  # noqa: E402
                                    METRIC_REGISTRY, MODEL_REGISTRY, Registry)

from .errors import OptionsError, close_match  # noqa: E402

import basicsr.archs  # noqa: F401,E402  (registers basicsr's archs, losses and metrics)
import basicsr.losses  # noqa: F401,E402
import basicsr.metrics  # noqa: F401,E402

SCHEDULER_REGISTRY = Registry("scheduler")

def registry(kind: str) -> Dict[str, Any]:
    """``{name: class or function}`` of one registry kind.

    Datasets and models are limited to those that declare our protocols (the class attribute
    ``vmambair_dataset`` / ``vmambair_model``, set on ``TrainableDataset`` / ``BaseModel``):
    basicsr's own datasets and models follow another sampler and training loop.
    """
    if kind == "arch":
        return dict(ARCH_REGISTRY._obj_map)
    if kind == "loss":
        return dict(LOSS_REGISTRY._obj_map)
    if kind == "metric":
        return dict(METRIC_REGISTRY._obj_map)
    if kind == "dataset":
        return {k: v for k, v in DATASET_REGISTRY._obj_map.items() if getattr(v, "vmambair_dataset", False)}
    if kind == "model":
        return {k: v for k, v in MODEL_REGISTRY._obj_map.items() if getattr(v, "vmambair_model", False)}
    if kind == "optim":
        import torch
        return {k: v for k, v in vars(torch.optim).items()
                if isinstance(v, type) and issubclass(v, torch.optim.Optimizer) and v is not torch.optim.Optimizer}
    if kind == "scheduler":
        return dict(SCHEDULER_REGISTRY._obj_map)
    raise KeyError(kind)


def dataset_class(name: str) -> Any:
    """The registered dataset class called ``name`` (None if there is none)."""
    return registry("dataset").get(name)


# Constructor arguments supplied by the framework, not by the options file.
_SUPPLIED_ARGS = {"optim": {"params"}, "scheduler": {"optimizer", "last_epoch", "verbose"},
                  "metric": {"img", "img2", "input_order"}, "arch": set(), "loss": set(),
                  "dataset": {"opt"}, "model": {"opt"}}


def check_registry_name(name: str, kind: str, key: str) -> Any:
    table = registry(kind)
    if name not in table:
        raise OptionsError(f"Option '{key}' names '{name}', which is not a registered {kind}. "
                           f"{close_match(name, table)}")
    return table[name]


def _kwarg_type_ok(value: Any, param: inspect.Parameter) -> bool:
    default = param.default
    if default is inspect.Parameter.empty or default is None or value is None:
        return True
    # An argument annotated as a Union of plain types (e.g. Union[bool, str]) takes any of them.
    if typing.get_origin(param.annotation) is Union:
        kinds = tuple(a for a in typing.get_args(param.annotation) if isinstance(a, type))
        if kinds:
            return isinstance(value, kinds)
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, (int, float)):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    return True


def validate_registry_spec(spec: Any, kind: str, key: str) -> Dict[str, Any]:
    """Check ``{type: Name, **kwargs}`` against registry ``kind`` and the constructor signature."""
    if not isinstance(spec, dict) or "type" not in spec:
        raise OptionsError(f"Option '{key}' must be a mapping with a 'type' key naming a registered {kind}, "
                           f"got {spec!r}.")
    target = check_registry_name(spec["type"], kind, f"{key}.type")
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return dict(spec)
    params = {n: p for n, p in sig.parameters.items() if n not in ("self",)}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    supplied = _SUPPLIED_ARGS.get(kind, set())
    for name, value in spec.items():
        if name == "type":
            continue
        if name not in params:
            if takes_any:
                continue
            valid = [n for n, p in params.items() if n not in supplied
                     and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
            raise OptionsError(f"Option '{key}.{name}': {spec['type']} takes no argument '{name}'. "
                               f"{close_match(name, valid)}")
        if not _kwarg_type_ok(value, params[name]):
            raise OptionsError(f"Option '{key}.{name}' must be like its default "
                               f"{params[name].default!r} ({type(params[name].default).__name__}), "
                               f"got {value!r}.")
    missing = [n for n, p in params.items() if p.default is inspect.Parameter.empty and n not in spec
               and n not in supplied and p.kind not in (inspect.Parameter.VAR_POSITIONAL,
                                                        inspect.Parameter.VAR_KEYWORD)]
    if missing:
        raise OptionsError(f"Option '{key}': {spec['type']} needs argument(s) {missing}.")
    return dict(spec)


def build_from_spec(kind: str, spec: Dict[str, Any], *args, **extra) -> Any:
    """Instantiate a validated ``{type: Name, **kwargs}`` spec: ``Name(*args, **kwargs, **extra)``."""
    kwargs = {k: v for k, v in spec.items() if k != "type"}
    kwargs.update(extra)
    try:
        return registry(kind)[spec["type"]](*args, **kwargs)
    except ValueError as err:
        if kind != "arch":
            raise
        # a network refusing a value its signature lets through
        raise OptionsError(f"Network {spec['type']} rejected its options: {err}") from err
