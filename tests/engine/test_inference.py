"""The one inference path (vmambair/engine/inference.py) and its users: no result tracks gradients,
the memory estimate picks whole image or tiles against an injected budget, out-of-memory errors
(CPU allocator, CUDA, MemoryError) are retried in smaller tiles, and an image that cannot run at
all gets one line while test.py still prints its table.

Out-of-memory is simulated by :class:`OomAbove`, a wrapper that raises the CPU allocator's error
for inputs above a pixel count (real memory is never exhausted); like the CUDA-graph wrapper, it
is not an ``nn.Module`` and exposes the network as ``.net``, so the memory probe runs on the
network itself."""
import cv2
import numpy as np
import pytest
import torch
import yaml

import vmambair  # noqa: F401
from vmambair.apps import report as report_app
from vmambair.apps import restore as restore_app
from vmambair.apps import test as test_app
from vmambair.archs import VmambaIR
from vmambair.config import ValOptions
from vmambair.engine import inference
from vmambair.engine.checkpoint import save_network
from vmambair.engine.evaluate import build_eval_loader, evaluate_dataset
from vmambair.engine.inference import (ImageTooLargeError, is_out_of_memory, measure_memory_profile, plan_tiles,
                                       restore_array, restore_image, run_inference)

from tests.helpers import ROOT, TINY_NET, make_pairs, one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

CPU_OOM = ("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried to "
           "allocate 123456789 bytes. Error code 12 (Cannot allocate memory)")


def tiny_net(scale: int = 1, seed: int = 0) -> VmambaIR:
    torch.manual_seed(seed)
    return VmambaIR(**{k: v for k, v in dict(TINY_NET, scale=scale).items() if k != "type"})


class GradSpy:
    """Forward hook: records, for every forward pass of ``net``, whether autograd was on and
    whether the output tracks gradients."""

    def __init__(self, net: torch.nn.Module):
        self.calls = []
        net.register_forward_hook(lambda m, args, out: self.calls.append(
            (torch.is_grad_enabled(), out.requires_grad)))

    def check(self):
        assert self.calls, "the network never ran"
        assert all(not grad and not tracks for grad, tracks in self.calls), self.calls


class OomAbove:
    """Runs ``net`` but raises ``error`` (the CPU allocator's by default) for inputs of more than
    ``limit`` pixels; records the input sizes it accepted."""

    def __init__(self, net, limit: int, error=None):
        self.net, self.limit, self.error = net, limit, error or (lambda: RuntimeError(CPU_OOM))
        self.training, self.accepted = False, []

    def eval(self):
        self.net.eval()
        return self

    def train(self, mode: bool = True):
        self.net.train(mode)
        return self

    def __call__(self, x):
        if x.shape[-2] * x.shape[-1] > self.limit:
            raise self.error()
        self.accepted.append(tuple(x.shape[-2:]))
        return self.net(x)


# ----------------------------------------------------------------------------- gradients
def test_no_restore_path_returns_a_tensor_that_tracks_gradients():
    net = tiny_net()
    assert all(p.requires_grad for p in net.parameters())  # as a training network has them
    spy = GradSpy(net)
    img = torch.rand(1, 3, 20, 28)
    outs = [restore_image(net, img), restore_image(net, img, tile=16, overlap=4),
            restore_image(net, img, self_ensemble=True)]
    for tile in ("auto", 0, 16):
        outs.append(run_inference(net, img, tile=tile, overlap=4, budget=1 << 40).output)
    outs.append(run_inference(net, img, tile="auto", overlap=4, budget=0).output)  # tiled by the plan
    for out in outs:
        assert not out.requires_grad and out.grad_fn is None
    spy.check()
    # The numpy entry point (restore.py, vmambair.restore) runs the network the same way.
    spy.calls.clear()
    restore_array(net, (np.random.default_rng(0).random((20, 28, 3)) * 255).astype(np.uint8))
    spy.check()


def test_validation_test_report_and_cli_run_without_autograd(tmp_path, monkeypatch):
    data = make_pairs(tmp_path / "set", 2, size=(16, 24))
    from vmambair.data.paired_dataset import PairedImageFolderDataset  # noqa: F401  (registered)
    from basicsr.utils.registry import DATASET_REGISTRY
    from vmambair.config.schema import DatasetOptions

    ds = DATASET_REGISTRY.get("PairedImageFolderDataset")(DatasetOptions(
        name="set", type="PairedImageFolderDataset", dataroot_gt=str(data / "target"),
        dataroot_lq=str(data / "input"), phase="val"))
    val = ValOptions(metrics={"psnr": {"type": "calculate_psnr", "crop_border": 0}})
    net = tiny_net()
    net.train()  # as during training: evaluation must switch to eval and back
    spy = GradSpy(net)
    means, n, _ = evaluate_dataset(net, build_eval_loader(ds), val, 1, torch.device("cpu"), show_progress=False)
    assert n == 2 and "psnr" in means and net.training
    spy.check()
    spy.calls.clear()
    rows = report_app.compare_with_inputs(net, ds, val, 1, torch.device("cpu"), False, tmp_path / "cmp")
    assert len(rows) == 2
    spy.check()

    # test.py and restore.py build their own network: spy on it through build_from_spec.
    spies = []

    def spying_build(build):
        def build_and_spy(kind, spec):
            built = build(kind, spec)
            spies.append(GradSpy(built))
            return built
        return build_and_spy

    monkeypatch.setattr(test_app, "build_from_spec", spying_build(test_app.build_from_spec))
    monkeypatch.setattr(restore_app, "build_from_spec", spying_build(restore_app.build_from_spec))
    save_network(tiny_net(), tmp_path / "net_g.pth", safetensors=True)
    opt = {"name": "t", "scale": 1, "num_gpu": 0, "network_g": dict(TINY_NET),
           "datasets": {"test_1": {"name": "set", "type": "PairedImageFolderDataset",
                                   "dataroot_gt": str(data / "target"), "dataroot_lq": str(data / "input")}},
           "path": {"root": str(tmp_path), "pretrain_network_g": str(tmp_path / "net_g.safetensors")},
           "val": {"metrics": {"psnr": {"type": "calculate_psnr", "crop_border": 0}}}}
    (tmp_path / "t.yml").write_text(yaml.safe_dump(opt))
    assert test_app.run_benchmark(["-opt", str(tmp_path / "t.yml")]) == 0
    assert restore_app.restore_main(["-i", str(data / "input"), "-o", str(tmp_path / "out"), "-opt",
                                     str(tmp_path / "t.yml"), "--weights", str(tmp_path / "net_g.safetensors"),
                                     "--device", "cpu"]) == 0
    assert len(spies) == 2
    for s in spies:
        s.check()


# ----------------------------------------------------------------------------- estimate and plan
class ToyStripTail(torch.nn.Module):
    """An x4 network shaped like VmambaIR's memory: a cheap body, then a wide upsampling tail that
    runs on strips of ``tail_strip_pixels`` input pixels (whole when the image is smaller)."""
    scale = 4
    tail_strip_pixels = 1 << 17

    def forward(self, x):
        rows = max(1, self.tail_strip_pixels // x.shape[-1])
        feat = x * 2
        return torch.cat([torch.nn.functional.interpolate(feat[..., r: r + rows, :].repeat(1, 8, 1, 1),
                                                          scale_factor=4)[:, :3].clone()
                          for r in range(0, x.shape[-2], rows)], dim=-2)


def test_memory_profile_is_cached_and_separates_the_strip_wise_sr_tail():
    net = tiny_net(scale=4)
    p = measure_memory_profile(net, torch.device("cpu"))
    assert measure_memory_profile(net, torch.device("cpu")) is p  # measured once per network
    assert p.per_pixel > 0 and p.tail_per_pixel >= 0 and p.tail_strip_pixels == net.tail_strip_pixels
    assert "tail_strip_pixels" not in vars(net)  # the probe left the network as it was

    toy = ToyStripTail()
    p = measure_memory_profile(toy, torch.device("cpu"))
    assert "tail_strip_pixels" not in vars(toy)
    # Whole (at the probe size), the tail holds its 8 x 3-channel intermediate at 16 output pixels
    # per input pixel (fp32: 1536 bytes per input pixel); in one-row strips it never does.
    wide = 8 * 3 * 16 * 4
    assert p.per_pixel + p.tail_per_pixel >= wide and p.per_pixel < wide / 2
    # Past the strip size, the tail's share stops growing: the estimate grows by the body's cost only.
    s = p.tail_strip_pixels
    assert p.peak_bytes(4 * s) - p.peak_bytes(2 * s) == pytest.approx(2 * s * p.per_pixel * p.safety, rel=1e-6)
    assert p.peak_bytes(s // 2) - p.peak_bytes(s // 4) == pytest.approx(
        s // 4 * (p.per_pixel + p.tail_per_pixel) * p.safety, rel=1e-6)
    # A same-size network has no strip-wise tail.
    q = measure_memory_profile(tiny_net(), torch.device("cpu"))
    assert q.tail_per_pixel == 0 and q.per_pixel > 0


def test_probe_estimate_bounds_the_measured_peak_of_a_larger_image():
    """The estimate from the 64x64 probe, without its safety margin, covers the live tensor bytes
    of a 128x96 forward (counted the same way) and is not wildly above them."""
    net = tiny_net(scale=4, seed=1)
    p = measure_memory_profile(net, torch.device("cpu"))
    with torch.no_grad(), inference._LiveTensorBytes() as counter:
        net(torch.rand(1, 3, 128, 96))
    raw = (p.peak_bytes(128 * 96) - p.overhead) / p.safety
    assert counter.peak <= raw * 1.05
    assert counter.peak >= raw * 0.5


@pytest.mark.parametrize("scale", [1, 4])
def test_plan_is_whole_when_it_fits_else_the_largest_tile_that_fits(scale):
    p = inference.MemoryProfile(per_pixel=1000.0, tail_per_pixel=500.0 if scale > 1 else 0.0,
                                tail_strip_pixels=4096 if scale > 1 else 0, safety=1.25, overhead=1 << 20)
    h, w = 300, 200
    need = p.peak_bytes(304 * 200)  # padded to multiples of 8
    whole = plan_tiles(h, w, p, need, scale=scale)
    assert whole.tile is None and whole.needed == need
    budget = need // 3
    plan = plan_tiles(h, w, p, budget, scale=scale)
    extra = inference.tiled_extra_bytes(304, 200, scale, 3)
    t = plan.tile
    assert t % 8 == 0 and t < 304
    assert p.peak_bytes(min(t, 304) * min(t, 200)) + extra <= budget            # fits
    # As few tiles as the largest fitting tile gives, each as small as that count allows.
    fits = [u for u in range(8, 312, 8) if p.peak_bytes(min(u, 304) * min(u, 200)) + extra <= budget]
    n = inference.count_tiles(304, 200, max(fits), overlap=32)
    assert n > 1 and inference.count_tiles(304, 200, t, overlap=32) == n
    assert inference.count_tiles(304, 200, t - 8, overlap=32) > n
    # Nothing fits: the smallest tile (twice the overlap) is planned, and the OOM handling decides.
    assert plan_tiles(h, w, p, 0, scale=scale, overlap=32).tile == 64


def test_auto_runs_whole_within_budget_and_tiles_with_a_note_beyond():
    net = tiny_net()
    img = torch.rand(1, 3, 40, 56)
    whole = restore_image(net, img)
    notes = []
    big = run_inference(net, img, budget=1 << 40, log=notes.append)
    assert big.tile is None and big.tiles == 1 and not notes
    assert torch.equal(big.output, whole)
    p = measure_memory_profile(net, torch.device("cpu"))
    budget = p.peak_bytes(32 * 32) + inference.tiled_extra_bytes(40, 56, 1, 3)
    small = run_inference(net, img, overlap=8, budget=budget, name="photo.png", log=notes.append)
    assert small.tile is not None and small.tile < 56 and small.tiles > 1
    assert small.needed > budget and small.budget == budget
    assert len(notes) == 1 and "photo.png (56x40)" in notes[0] and f"tiles of {small.tile}px" in notes[0]
    assert "differs slightly" in notes[0]
    assert torch.equal(small.output, restore_image(net, img, tile=small.tile, overlap=8))
    # A fixed tile is used as given, without a note.
    notes.clear()
    fixed = run_inference(net, img, tile=16, overlap=4, budget=1 << 40, log=notes.append)
    assert fixed.tile == 16 and not notes


def test_budget_from_max_memory_counts_what_the_process_holds():
    held = inference.memory_in_use(torch.device("cpu"))
    assert held > 0
    assert inference.memory_budget(torch.device("cpu"), max_memory=held // 2) == 0
    room = inference.memory_budget(torch.device("cpu"), max_memory=held + (256 << 20))
    assert 0 < room <= 256 << 20
    assert inference.available_memory(torch.device("cpu")) > 0


# ----------------------------------------------------------------------------- out of memory
def test_out_of_memory_errors_are_recognised():
    assert is_out_of_memory(RuntimeError(CPU_OOM))
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))
    assert not is_out_of_memory(ImageTooLargeError("a.png", (10, 20), 1 << 30, 1 << 29, 64, "cpu"))


@pytest.mark.parametrize("error", [lambda: RuntimeError(CPU_OOM), MemoryError,
                                   lambda: torch.cuda.OutOfMemoryError("CUDA out of memory.")])
def test_out_of_memory_is_retried_in_halved_tiles(error):
    net = tiny_net()
    img = torch.rand(1, 3, 64, 64)
    oom = OomAbove(net, 40 * 40, error)
    notes = []
    result = run_inference(oom, img, tile=0, overlap=8, name="big.png", log=notes.append)
    assert result.retries == 1 and result.tile == 32 and result.tiles == 9
    assert all(h * w <= 40 * 40 for h, w in oom.accepted)
    assert len(notes) == 1 and "big.png (64x64)" in notes[0] and "retrying in 32px tiles" in notes[0]
    assert torch.equal(result.output, restore_image(net, img, tile=32, overlap=8))


def test_other_errors_are_not_swallowed():
    def broken(x):
        raise RuntimeError("shape mismatch")
    with pytest.raises(RuntimeError, match="shape mismatch"):
        run_inference(broken, torch.rand(1, 3, 16, 16), tile=0)


def test_what_cannot_run_even_in_the_smallest_tiles_raises_one_line():
    net = tiny_net()
    oom = OomAbove(net, 15 * 15)  # even 16x16 tiles fail; the probe runs on the network itself
    with pytest.raises(ImageTooLargeError) as info:
        run_inference(oom, torch.rand(1, 3, 40, 72), overlap=4, budget=1 << 40, name="huge.png")
    text = str(info.value)
    assert "\n" not in text and "huge.png (72x40)" in text and "16px tiles" in text
    p = measure_memory_profile(net, torch.device("cpu"))
    assert info.value.needed == p.peak_bytes(40 * 72) and f"{p.peak_bytes(40 * 72) / 2**30:.2f} GB" in text


def test_test_py_skips_an_image_that_cannot_run_and_still_prints_the_table(tmp_path, monkeypatch, capsys):
    data = tmp_path / "Datasets"
    make_pairs(data / "test" / "Rain100H", 2, size=(8, 24))   # padded 8x24: 192 pixels
    make_pairs(data / "test" / "Test100", 1, size=(40, 40))   # even 16x16 tiles exceed the limit
    save_network(tiny_net(), tmp_path / "net_g.pth", safetensors=True)
    raw = yaml.safe_load((ROOT / "options" / "test_derain.yml").read_text())
    raw["network_g"] = dict(TINY_NET)
    raw["path"].update(root=str(tmp_path), data_root=str(data), pretrain_network_g=str(tmp_path / "net_g.safetensors"))
    raw["val"].update(tile_overlap=4, metrics={"psnr": {"type": "calculate_psnr", "crop_border": 0}})
    (tmp_path / "test.yml").write_text(yaml.safe_dump(raw))
    real_evaluate = test_app.evaluate_dataset
    monkeypatch.setattr(test_app, "evaluate_dataset",
                        lambda net, *a, **k: real_evaluate(OomAbove(net, 255), *a, **k))

    assert test_app.run_benchmark(["-opt", str(tmp_path / "test.yml"), "--set", "num_gpu=0"]) == 1
    out, err = capsys.readouterr()
    errors = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert "0.png (40x40)" in errors[0] and "GB" in errors[0] and "skipped" in errors[0]
    assert "| Rain100H | 2 |" in out and "| Test100 | 0 |" in out and "mean (of sets)" in out
    results = tmp_path / "results" / "VmambaIR_Deraining_test"
    assert "Not restored" in (results / "metrics.md").read_text()
    per_image = (results / "per_image.csv").read_text().splitlines()
    assert per_image[0].startswith("set,image,width,height,seconds") and len(per_image) == 3


@pytest.mark.cuda
def test_cuda_estimate_covers_the_allocator_peak_and_plans_against_free_memory():
    net = VmambaIR(in_channels=3, out_channels=3, dim=16, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1,
                   scale=4).cuda().eval()
    device = torch.device("cuda")
    p = measure_memory_profile(net, device, "bf16")
    img = torch.rand(1, 3, 256, 192)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    result = run_inference(net, img, scale=4, device=device, precision="bf16")
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    assert result.tile is None and result.output.shape == (1, 3, 1024, 768) and not result.output.requires_grad
    assert peak <= p.peak_bytes(256 * 192) and result.budget > 0
    # A budget below the estimate tiles it; the output keeps its size.
    tiled = run_inference(net, img, scale=4, device=device, precision="bf16", budget=p.peak_bytes(128 * 128))
    assert tiled.tile is not None and tiled.tiles > 1 and tiled.output.shape == (1, 3, 1024, 768)
