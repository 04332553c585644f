"""docs/architecture.md's worked examples run: a new loss, dataset and scan backend, each one
block of code, work through the options layer and the scan dispatcher as the page says."""
import re
from pathlib import Path

import pytest
import torch

from tests.helpers import ROOT, tiny_options

DOC = ROOT / "docs" / "architecture.md"


def example(name: str) -> str:
    blocks = dict(re.findall(r"```python example=(\w+)\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S))
    assert name in blocks, f"docs/architecture.md lost its '{name}' example"
    return blocks[name]


def run_example(name: str) -> dict:
    namespace = {"__name__": f"vmambair_example_{name}"}
    exec(compile(example(name), f"docs/architecture.md:{name}", "exec"), namespace)
    return namespace


def unregister(registry, name):
    registry._obj_map.pop(name, None)


def test_loss_example_is_accepted_by_options_and_builds(tmp_path):
    from vmambair.config import LOSS_REGISTRY
    from vmambair.config import OptionsError, build_from_spec, load_options

    ns = run_example("loss")
    try:
        opt = load_options(tiny_options(tmp_path), ["train.pixel_opt={type: CharbonnierExampleLoss, eps: 0.01}"])
        loss = build_from_spec("loss", opt.train.pixel_opt)
        assert isinstance(loss, ns["CharbonnierExampleLoss"])
        x = torch.zeros(1, 3, 4, 4)
        assert loss(x, x).item() == pytest.approx(0.01)
        with pytest.raises(OptionsError, match="takes no argument 'epsilon'"):
            load_options(tiny_options(tmp_path), ["train.pixel_opt={type: CharbonnierExampleLoss, epsilon: 1}"])
    finally:
        unregister(LOSS_REGISTRY, "CharbonnierExampleLoss")


def test_dataset_example_trains_through_the_options(tmp_path):
    from vmambair.config import DATASET_REGISTRY
    from vmambair.apps.train import train_main

    run_example("dataset")
    try:
        opt = tiny_options(tmp_path, total_iter=2)
        spec = ("{name: toy, type: NoisyGradientExampleDataset, dataroot_gt: nowhere, gt_size: 16, "
                "num_worker_per_gpu: 0, noise_sigma: 0.05}")
        args = ["-opt", str(opt), "--set", f"datasets.train={spec}", "--set", "val.val_freq=100",
                "--set", "logger.save_checkpoint_freq=100"]
        assert train_main(args) == 0
        assert (tmp_path / "experiments" / "tiny" / "models" / "net_g_latest.pth").is_file() or \
            list((tmp_path / "experiments" / "tiny" / "models").glob("net_g_*"))
        # the class's own options are typed and checked like every option
        from vmambair.config import OptionsError, load_options
        opts = load_options(opt, ["--set"][1:] + [f"datasets.train={spec}"])
        assert opts.datasets["train"].own.noise_sigma == 0.05 and opts.datasets["train"].own.length == 8
        with pytest.raises(OptionsError, match="Unknown option 'datasets.train.noise_sigm'. Did you mean 'noise_sigma'"):
            load_options(opt, [f"datasets.train={spec[:-1]}, noise_sigm: 1}}"])
        with pytest.raises(OptionsError, match="datasets.train.length' must be int"):
            load_options(opt, [f"datasets.train={spec[:-1]}, length: many}}"])
    finally:
        unregister(DATASET_REGISTRY, "NoisyGradientExampleDataset")


def test_backend_example_is_selectable_and_correct():
    from vmambair import ops
    from vmambair.ops.selective_scan import _BACKENDS

    run_example("backend")
    try:
        g = torch.Generator().manual_seed(0)
        u, delta = torch.randn(2, 4, 10, generator=g), torch.randn(2, 4, 10, generator=g)
        A = -torch.rand(4, 3, generator=g)
        B, C = torch.randn(2, 3, 10, generator=g), torch.randn(2, 3, 10, generator=g)
        D, bias = torch.randn(4, generator=g), torch.randn(4, generator=g)
        with ops.use_backend("python_loop"):
            assert ops.resolve_backend(torch.device("cpu")).name == "python_loop"
            y = ops.selective_scan(u, delta, A, B, C, D, bias, delta_softplus=True)
        y_ref = ops.selective_scan(u, delta, A, B, C, D, bias, delta_softplus=True, backend="reference")
        torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    finally:
        _BACKENDS.pop("python_loop", None)
