"""Paired folders: pairing errors, corrupt files, size mismatch, image conversions, sampler."""
import cv2
import numpy as np
import pytest
import torch

import vmambair  # noqa: F401
from vmambair.data import DataError, PairedImageFolderDataset, ResumableBatchSampler, read_image
from vmambair.engine.inference import restore_image
from vmambair.engine.lr_scheduler import CosineAnnealingRestartCyclicLR
from vmambair.apps.train import ProgressiveSchedule

from tests.helpers import make_pairs, one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def _dataset(folder, phase="val", **kw):
    opt = {"dataroot_gt": str(folder / "target"), "dataroot_lq": str(folder / "input"), "phase": phase, "scale": 1}
    opt.update(kw)
    return PairedImageFolderDataset(opt)


def test_pairs_and_training_crops(tmp_path):
    folder = make_pairs(tmp_path / "set", 3)
    ds = _dataset(folder, phase="train", gt_size=16)
    item = ds[(1, 1234)]
    assert item["lq"].shape == item["gt"].shape == (3, 16, 16)
    again = ds[(1, 1234)]
    assert torch.equal(item["lq"], again["lq"])  # per-item seed: same crop and flips
    ds.set_patch_size(8)
    assert ds[(0, 5)]["gt"].shape == (3, 8, 8)


def test_missing_pair_and_empty_folder(tmp_path):
    folder = make_pairs(tmp_path / "set", 2)
    (folder / "input" / "1.png").unlink()
    with pytest.raises(DataError, match=r"target.1\.png' has no input pair"):
        _dataset(folder)
    empty = tmp_path / "empty"
    (empty / "input").mkdir(parents=True)
    (empty / "target").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        _dataset(empty)


def test_corrupt_file_is_named(tmp_path):
    folder = make_pairs(tmp_path / "set", 2)
    bad = folder / "input" / "0.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    ds = _dataset(folder)
    with pytest.raises(DataError, match="0.png' is corrupt"):
        ds[0]
    bad.write_bytes(b"")
    with pytest.raises(DataError, match="is empty"):
        ds[0]


def test_size_mismatch_is_named(tmp_path):
    folder = make_pairs(tmp_path / "set", 1)
    cv2.imwrite(str(folder / "input" / "0.png"), np.zeros((10, 12, 3), np.uint8))
    with pytest.raises(DataError, match="Size mismatch.*0.png"):
        _dataset(folder)[0]


def test_gray_rgba_16bit_convert_alike(tmp_path):
    gray = (np.arange(64, dtype=np.uint8).reshape(8, 8) * 4)
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    cv2.imwrite(str(tmp_path / "g16.png"), gray.astype(np.uint16) * 257)
    rgba = np.dstack([gray, gray, gray, np.full_like(gray, 255)])
    cv2.imwrite(str(tmp_path / "a.png"), rgba)
    g, g16, a = (read_image(tmp_path / n) for n in ("g.png", "g16.png", "a.png"))
    assert g.shape == g16.shape == a.shape == (8, 8, 3) and g.dtype == np.float32
    np.testing.assert_allclose(g, g16, atol=1e-6)
    np.testing.assert_allclose(g, a, atol=1e-6)
    transparent = np.dstack([gray, gray, gray, np.zeros_like(gray)])
    cv2.imwrite(str(tmp_path / "t.png"), transparent)
    assert np.allclose(read_image(tmp_path / "t.png"), 1.0)  # composited onto white


def test_sampler_ranks_partition_the_global_batch():
    single = list(ResumableBatchSampler(10, 4, seed=3, epoch=2))
    ranks = [list(ResumableBatchSampler(10, 2, rank=r, world_size=2, seed=3, epoch=2)) for r in range(2)]
    for k, batch in enumerate(single):
        assert sorted(batch) == sorted(ranks[0][k] + ranks[1][k])
    # Resuming at a sample offset continues the same sequence.
    full = list(ResumableBatchSampler(10, 2, seed=3, epoch=1))
    assert list(ResumableBatchSampler(10, 2, seed=3, epoch=1, start=4)) == full[2:]


def test_progressive_schedule_and_scheduler():
    s = ProgressiveSchedule([128, 160], [8, 5], [3, 2])
    assert [s.stage_at(i) for i in range(7)] == [0, 0, 0, 1, 1, 1, 1]
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=3e-4)
    sched = CosineAnnealingRestartCyclicLR(opt, [4, 4], [1, 1], [3e-4, 1e-6])
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:5] == pytest.approx([3e-4] * 5)
    assert lrs[6] < lrs[5] < 3e-4 and opt.param_groups[0]["lr"] == pytest.approx(1e-6)


def test_restore_image_tiles_and_pads():
    net = torch.nn.Conv2d(3, 3, 3, padding=1)
    img = torch.rand(1, 3, 37, 45)
    with torch.no_grad():
        whole = restore_image(net, img, multiple=8)
        tiled = restore_image(net, img, tile=16, overlap=4, multiple=8)
        ens = restore_image(torch.nn.Identity(), img, self_ensemble=True)
    assert whole.shape == tiled.shape == (1, 3, 37, 45)
    assert torch.allclose(ens, img, atol=1e-6)
    assert (whole - tiled).abs()[..., 4:-4, 4:-4].mean() < 0.05


def test_meta_info_file_and_filename_template(tmp_path):
    folder = make_pairs(tmp_path / "set", 3)
    for p in (folder / "input").iterdir():
        p.rename(p.with_name(f"{p.stem}_rain.png"))
    meta = tmp_path / "meta.txt"
    meta.write_text("2.png (24,24,3)\n0.png (24,24,3)\n")
    ds = _dataset(folder, filename_tmpl="{}_rain", meta_info_file=str(meta))
    assert [p[1].rsplit("/", 1)[1] for p in ds.pairs] == ["2.png", "0.png"]
    assert ds[0]["lq_path"].endswith("2_rain.png")


def test_degradation_key_is_typed_by_the_dataset_class(tmp_path):
    """Each dataset declares the settings of its degradation key; options validation checks them with
    the same engine as every section (unknown keys with a suggestion, types), before any work."""
    import pytest
    from vmambair.config import OptionsError, load_options
    from vmambair.data.degradation import DegradationSettings
    from vmambair.data.quickstart import QuickstartRainOptions
    from tests.helpers import ROOT

    quick = ROOT / "options" / "quickstart.yml"
    over = [f"path.data_root={tmp_path}", f"path.root={tmp_path}"]
    opt = load_options(quick, over + ["datasets.train.degradation={variants: 2, angle: [-10, 10]}"])
    s = opt.datasets["train"].degradation
    assert isinstance(s, QuickstartRainOptions) and s.variants == 2 and s.angle == [-10.0, 10.0]
    with pytest.raises(OptionsError, match=r"Unknown option 'datasets.train.degradation.varients'. Did you mean 'variants'"):
        load_options(quick, over + ["datasets.train.degradation={varients: 2}"])
    with pytest.raises(OptionsError, match="datasets.train.degradation.max_side' must be int"):
        load_options(quick, over + ["datasets.train.degradation={max_side: big}"])
    # a dataset without synthesised inputs takes no degradation key
    from tests.helpers import tiny_options
    with pytest.raises(OptionsError, match="PairedImageFolderDataset takes no degradation settings"):
        load_options(tiny_options(tmp_path), ["datasets.train.degradation={x: 1}"])
    # Real-ESRGAN's settings: consistency checks run at load time too
    real = ROOT / "options" / "realsr_x4_psnr.yml"
    (tmp_path / "train" / "DF2K_OST").mkdir(parents=True, exist_ok=True)
    base = load_options(real, over + ["datasets.train.dataroot_gt=train/DF2K_OST", "datasets.train.meta_info_file=null",
                                      "datasets={train: ${x}}".replace("${x}", "{name: t, type: RealESRGANGTDataset, "
                                                                        "dataroot_gt: train/DF2K_OST, gt_size: 256}")])
    assert isinstance(base.datasets["train"].degradation, DegradationSettings)
    with pytest.raises(OptionsError, match="resize_prob' .* must sum to 1"):
        load_options(real, over + ["datasets={train: {name: t, type: RealESRGANGTDataset, dataroot_gt: train/DF2K_OST, "
                                   "gt_size: 256, degradation: {resize_prob: [0.5, 0.5, 0.5]}}}"])
