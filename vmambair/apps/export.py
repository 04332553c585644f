"""Export trained weights: self-describing safetensors, or ONNX. The engine behind ``scripts/export.py``.

    python scripts/export.py net_g_latest.pth -opt options/derain.yml     # -> net_g_latest.safetensors
    python scripts/export.py net_g.safetensors --onnx net_g.onnx [--opset 17] [--fp16]

safetensors files hold only tensors (no code runs when they are read), load fast, and are what
we recommend for sharing weights. Every one we write carries the metadata of
:mod:`vmambair.engine.portable` (architecture, ``network_g``, scale, task...), so that
``vmambair.load_model`` and ``scripts/restore.py --weights`` need no options file. The network
description comes from ``-opt``, from the source's own metadata, or from the conversion of a
checkpoint of the authors' code; a source with none of them is refused with a message saying so.
Sources are read safely: ``.pth`` with ``torch.load(weights_only=True)``.

ONNX files take a (batch, 3, height, width) float image in [0, 1] (RGB) and return (batch, 3,
height*scale, width*scale), with batch, height and width dynamic (height and width at least 8).
The selective scans are traced with the ``export`` scan backend (vmambair/ops/scan_export.py),
so the graph holds standard ONNX operators only and stock onnxruntime runs it. See docs/export.md.
"""
from __future__ import annotations

import argparse
import io
import sys
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

import vmambair  # noqa: F401  (compat shim + registries)

from ..engine.checkpoint import CheckpointError, atomic_write_bytes, load_into_network, read_network_weights
from ..engine.portable import (EXECUTION_ONLY_ARGS, describes_network, guess_task, load_model, network_spec,
                               read_weights, save_weights, weights_metadata)
from ..config import OptionsError, build_from_spec, load_options
from .. import ops, runtime

# The example image the ONNX graph is traced with: small (tracing runs the network once), a
# multiple of 8 and large enough that every tensor dimension that varies with the image size is
# more than 1 (a size-1 dimension can be recorded as a broadcast).
ONNX_EXAMPLE_SIZE = 64
DEFAULT_OPSET = 17


def _description(src: Path, opt_path, converted, network_g, scale, task
                 ) -> Tuple[Optional[dict], Optional[int], Optional[str]]:
    """(network_g, scale, task) from, in order: explicit arguments, -opt, the conversion of an
    authors' checkpoint, the source's own metadata. Missing pieces are None."""
    if network_g is not None:
        s = scale if scale is not None else int(network_g.get("scale", 1))
        return dict(network_g), s, task or guess_task(src.stem, s)
    if opt_path is not None:
        opt = load_options(opt_path, ["datasets={}"], is_train=False)
        return dict(opt.network_g), int(opt.scale), task or guess_task(Path(opt_path).stem, opt.scale)
    if converted is not None:
        return dict(converted.network_g), int(converted.scale), task or guess_task(converted.family, converted.scale)
    if src.suffix == ".safetensors":
        _, meta = read_weights(src)
        if describes_network(meta):
            spec = network_spec(meta, f"Weight file '{src}'")
            s = int(meta.get("scale", spec.get("scale", 1)))
            return spec, s, task or meta.get("task") or guess_task(src.stem, s)
    return None, None, None


def export_safetensors(src: str | Path, dst: Optional[str | Path] = None, key: str = "params",
                       opt_path: Optional[str | Path] = None, network_g: Optional[dict] = None,
                       scale: Optional[int] = None, task: Optional[str] = None) -> Path:
    """Write the network state dict ``key`` of ``src`` as a self-describing safetensors file.

    Args:
        src: ``.pth`` (basicsr layout ``{'params': sd, 'params_ema': sd}`` or a flat state dict;
            a checkpoint of the authors' code is converted to our names) or ``.safetensors``.
        dst: target (default: ``src`` with the suffix ``.safetensors``).
        key: which entry to export (``params`` or ``params_ema``); falls back as
            :func:`vmambair.engine.checkpoint.load_network_weights` does.
        opt_path: options file whose ``network_g`` and ``scale`` describe the network.
        network_g, scale, task: the description given directly (instead of ``opt_path``).

    The network comes from ``network_g``/``opt_path``, else the authors' checkpoint conversion,
    else the source's metadata; the weights are loaded strictly into it before anything is
    written, so a mismatch is caught now rather than by whoever uses the file.

    Returns:
        The written path: ``{parameter name: tensor}`` with the metadata of
        :func:`vmambair.engine.portable.weights_metadata` (``source`` = the source file name,
        ``key`` = the exported entry).

    Raises:
        CheckpointError: unreadable or unsafe source, no network description, weights that do
            not fit the network, or ``dst`` equal to ``src``.
        OptionsError: invalid options file.
    """
    src = Path(src)
    dst = Path(dst) if dst else src.with_suffix(".safetensors")
    if dst.resolve() == src.resolve():
        raise CheckpointError(f"Export target '{dst}' is the source file; choose another name with -o.")
    state, converted = read_network_weights(src, key=key)  # a checkpoint of the authors' code comes out in our names
    spec, scale, task = _description(src, opt_path, converted, network_g, scale, task)
    if spec is None:
        raise CheckpointError(
            f"Weight file '{src}' does not say which network it holds (no vmambair metadata); give the options "
            f"file it was trained with: python scripts/export.py {src} -opt <options.yml>.")
    net = build_from_spec("arch", {k: v for k, v in spec.items() if k not in EXECUTION_ONLY_ARGS})
    if converted is None:
        load_into_network(net, src, key=key, strict=True)
    else:
        net.load_state_dict(state, strict=True)
    metadata = weights_metadata(spec, scale=scale, task=task, source=src.name, key=key)
    save_weights(state, dst, metadata)
    return dst


# ----------------------------------------------------------------------------- ONNX
def _onnx_bytes(net: torch.nn.Module, example: torch.Tensor, opset: int) -> bytes:
    """Trace ``net`` on ``example`` with the exportable scan and return the ONNX model bytes."""
    buffer = io.BytesIO()
    dims = {0: "batch", 2: "height", 3: "width"}
    # The SR tail runs in strips above tail_strip_pixels (same result); trace the whole-image path.
    old_strip = getattr(net, "tail_strip_pixels", None)
    if old_strip is not None:
        net.tail_strip_pixels = 1 << 62
    # The exporter lints its TorchScript graph about ten times, in time that grows faster than the
    # graph (most of the export time of a full-size network); the written model is checked with
    # onnx.checker instead.
    lint = torch._C._jit_pass_lint
    torch._C._jit_pass_lint = lambda graph: None
    try:
        # The tracer's notes on shape-dependent Python values (the SR tail's strip count, EFFN's
        # size check: both take the same branch at every size here), the exporter's notes on its
        # own passes and its deprecation notice are not the user's business. effn_align 0: the
        # EFFN convolutions at their natural width (the same function; the zero-padded weights
        # are computed tensors, which the exporter cannot give a shape). inference_scan_directions 4:
        # one scan per planar scan module, whatever device the model will run on (a quarter of the nodes).
        with (warnings.catch_warnings(), ops.use_backend("export"),
              runtime.use(effn_align=0, inference_scan_directions=4), torch.no_grad()):
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (example,), buffer, dynamo=False, opset_version=opset,
                              input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": dims, "output": {0: "batch", 2: "out_height", 3: "out_width"}})
    finally:
        torch._C._jit_pass_lint = lint
        if old_strip is not None:
            net.tail_strip_pixels = old_strip
    data = buffer.getvalue()
    import onnx

    onnx.checker.check_model(onnx.load_model_from_string(data))
    return data


def export_onnx(src: str | Path, dst: str | Path, opset: int = DEFAULT_OPSET, fp16: bool = False,
                opt_path: Optional[str | Path] = None, key: Optional[str] = None,
                check: bool = True) -> Dict[str, object]:
    """Export a trained network to ONNX with dynamic batch, height and width.

    Args:
        src: weights that :func:`vmambair.load_model` reads (self-describing ``.safetensors``, or
            any weights with ``opt_path``).
        dst: the ``.onnx`` file to write (atomically).
        opset: ONNX opset (>= 14: the closed-form scan level uses Trilu).
        fp16: weights, input and output in float16 (for GPU runtimes; the scans still compute
            in float32, as in PyTorch).
        opt_path: options file describing the network (for weights without metadata).
        key: entry of a file holding several (params / params_ema).
        check: run the written file with onnxruntime (CPU) on two image sizes and compare with
            PyTorch (skipped if onnxruntime is not installed or with ``fp16``).

    Returns:
        ``{'path', 'scale', 'max_abs_diff' (per checked size, or None)}``.

    Raises:
        CheckpointError / OptionsError: unreadable weights or options; ValueError: bad opset.
    """
    if opset < 14:
        raise ValueError(f"--opset {opset}: the exported scan needs opset 14 or newer (Trilu); use e.g. --opset 17.")
    dst = Path(dst)
    net = load_model(src, options=opt_path, key=key)
    scale = int(getattr(net, "vmambair_scale", 1))
    dtype = torch.float16 if fp16 else torch.float32
    net = net.to(dtype)
    example = torch.rand(1, 3, ONNX_EXAMPLE_SIZE, ONNX_EXAMPLE_SIZE, generator=torch.Generator().manual_seed(0)).to(dtype)
    data = _onnx_bytes(net, example, opset)
    atomic_write_bytes(data, dst)
    report: Dict[str, object] = {"path": dst, "scale": scale, "max_abs_diff": None}
    if check and not fp16:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return report
        report["max_abs_diff"] = compare_with_onnxruntime(net, dst, sizes=((40, 56), (72, 48)))
    return report


def compare_with_onnxruntime(net: torch.nn.Module, onnx_path: str | Path,
                             sizes=((40, 56), (72, 48)), seed: int = 0) -> Dict[str, float]:
    """Max abs difference between onnxruntime (CPU) and PyTorch on random [0, 1] images.

    Args:
        net: the PyTorch network (fp32, eval).
        onnx_path: its exported file.
        sizes: (height, width) of the test images (one batch of 1 each).
    Returns:
        ``{'HxW': max abs difference}``.
    """
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(seed)
    out = {}
    for h, w in sizes:
        x = torch.rand(1, 3, h, w, generator=g)
        with torch.no_grad():
            want = net(x).numpy()
        got = session.run(None, {"input": x.numpy()})[0]
        if got.shape != want.shape:
            raise RuntimeError(f"ONNX output shape {got.shape} != PyTorch {want.shape} at {h}x{w}")
        out[f"{h}x{w}"] = float(np.abs(got.astype(np.float32) - want).max())
    return out


def export_main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``scripts/export.py``; returns the exit status (0 ok, 2 error)."""
    p = argparse.ArgumentParser(prog="export.py", description="Export trained weights to self-describing "
                                ".safetensors, or (--onnx) to an ONNX model with dynamic image size.")
    p.add_argument("weights", help="Source weights (.pth or .safetensors).")
    p.add_argument("-o", "--output", help="Target .safetensors file (default: beside the source).")
    p.add_argument("--key", default=None, help="Entry to export: params or params_ema (default: params for "
                   "safetensors export; for --onnx the file's own choice, params_ema if present).")
    p.add_argument("-opt", "--opt", help="Options file whose network_g describes the weights (needed when the "
                   "source has no vmambair metadata); the weights are checked against it before writing.")
    p.add_argument("--task", help="Task label stored in the metadata (default: from the options file name).")
    p.add_argument("--onnx", metavar="MODEL.onnx", help="Write an ONNX model instead of safetensors.")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET}; >= 14).")
    p.add_argument("--fp16", action="store_true", help="ONNX in float16 (weights, input, output; for GPU runtimes).")
    p.add_argument("--no-check", action="store_true", help="Skip the onnxruntime-vs-PyTorch check after --onnx.")
    args = p.parse_args(argv)
    try:
        if args.onnx:
            if args.output:
                raise OptionsError("-o names a .safetensors target; with --onnx the target is --onnx's file.")
            report = export_onnx(args.weights, args.onnx, args.opset, args.fp16, args.opt, args.key,
                                 check=not args.no_check)
            print(f"Wrote {report['path']} (x{report['scale']}; dynamic batch, height, width)")
            if report["max_abs_diff"]:
                diffs = ", ".join(f"{k}: {v:.2e}" for k, v in report["max_abs_diff"].items())
                print(f"onnxruntime (CPU) vs PyTorch, max abs difference on [0, 1] images: {diffs}")
            return 0
        out = export_safetensors(args.weights, args.output, args.key or "params", args.opt, task=args.task)
    except (CheckpointError, OptionsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"Wrote {out}")
    return 0
