"""Quick-start data builder: offline photos, disjoint splits, rain that only brightens, several
angles, determinism, option errors, and a tiny end-to-end run that prints the comparison."""
import json
import socket

import cv2
import numpy as np
import pytest
import yaml

import vmambair  # noqa: F401
from vmambair.data.image_io import DataError
from vmambair.data.quickstart import (HELD_OUT_PHOTOS, TRAIN_PHOTOS, QuickstartRainDataset, build_split,
                                      load_photo, split_settings, streak_kernel)
from vmambair.config import load_options
from vmambair.apps.train import train_main

from tests.helpers import ROOT, TINY_NET, one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {"variants": 2, "max_side": 64}


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails (CI has no network)."""
    def refuse(*args, **kwargs):
        raise OSError("network disabled in this test")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_photo_lists_disjoint_and_bundled(no_network):
    assert len(TRAIN_PHOTOS) >= 6 and len(HELD_OUT_PHOTOS) >= 2
    assert not set(TRAIN_PHOTOS) & set(HELD_OUT_PHOTOS)
    # The stereo pair shows one scene: both halves must be on the same side.
    assert {"motorcycle_left", "motorcycle_right"} <= set(TRAIN_PHOTOS)
    for name in TRAIN_PHOTOS + HELD_OUT_PHOTOS:
        img = load_photo(name)
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and min(img.shape[:2]) >= 150, name


def test_build_split_pairs_and_determinism(tmp_path, no_network):
    settings = split_settings("train", {"photos": ["astronaut", "camera"], **SMALL})
    root = build_split(tmp_path / "a", settings, log=lambda *_: None)
    names = sorted(p.name for p in (root / "target").iterdir())
    assert names == ["astronaut_0.png", "astronaut_1.png", "camera_0.png", "camera_1.png"]
    assert sorted(p.name for p in (root / "input").iterdir()) == names
    for name in names:
        gt = cv2.imread(str(root / "target" / name)).astype(int)
        lq = cv2.imread(str(root / "input" / name)).astype(int)
        assert gt.shape == lq.shape and max(gt.shape[:2]) == 64
        assert (lq >= gt - 1).all()                      # screen-blended rain only brightens
        assert (lq - gt).max() > 40 and (lq != gt).any(axis=2).mean() > 0.005   # and is visible
    # Grayscale photos are stored as three equal channels.
    cam = cv2.imread(str(root / "target" / "camera_0.png"))
    assert (cam[..., 0] == cam[..., 1]).all() and (cam[..., 1] == cam[..., 2]).all()

    manifest = json.loads((root / "manifest.json").read_text())
    angles = [layer["angle"] for item in manifest["items"] for layer in item["rain"]]
    lengths = [layer["length"] for item in manifest["items"] for layer in item["rain"]]
    assert max(angles) - min(angles) > 5 and max(lengths) - min(lengths) > 5
    # Same settings, other folder: identical bytes. Same folder again: nothing rebuilt.
    other = build_split(tmp_path / "b", settings, log=lambda *_: None)
    for name in names:
        assert (root / "input" / name).read_bytes() == (other / "input" / name).read_bytes()
    stamp = (root / "input" / names[0]).stat().st_mtime_ns
    messages = []
    build_split(root, settings, log=messages.append)
    assert messages == [] and (root / "input" / names[0]).stat().st_mtime_ns == stamp
    # Other settings: rebuilt in place, no temporary folders left behind.
    build_split(root, split_settings("train", {"photos": ["camera"], **SMALL}), log=lambda *_: None)
    assert sorted(p.name for p in (root / "input").iterdir()) == ["camera_0.png", "camera_1.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_streak_kernel_orientation():
    vertical, horizontal = streak_kernel(21, 0, 0.5), streak_kernel(21, 90, 0.5)
    assert vertical.max() == pytest.approx(1.0) and horizontal.max() == pytest.approx(1.0)
    # A vertical streak spreads over rows, a horizontal one over columns.
    assert (vertical.sum(1) > 0.3).sum() >= 18 and (vertical.sum(0) > 0.3).sum() <= 4
    assert (horizontal.sum(0) > 0.3).sum() >= 18 and (horizontal.sum(1) > 0.3).sum() <= 4


def test_settings_errors():
    with pytest.raises(DataError, match="disjoint"):
        split_settings("train", {"photos": ["astronaut", "chelsea"]})
    with pytest.raises(DataError, match="degradation.varaints"):
        split_settings("val", {"varaints": 3})


def test_dataset_from_options_builds_both_splits(tmp_path, no_network):
    over = [f"path.data_root={tmp_path / 'D'}", f"path.root={tmp_path}",
            "datasets.train.degradation={photos: [coins, moon], variants: 2, max_side: 64}",
            "datasets.val.degradation={photos: [chelsea], variants: 1, max_side: 64}"]
    opt = load_options(ROOT / "options" / "quickstart.yml", over, is_train=True)   # folders do not exist yet
    train = QuickstartRainDataset(opt.datasets["train"])
    val = QuickstartRainDataset(opt.datasets["val"])
    assert len(train) == 4 * opt.datasets["train"].dataset_enlarge_ratio and len(val) == 1
    item = val[0]
    assert item["lq"].shape == item["gt"].shape and item["lq"].shape[0] == 3
    train.set_patch_size(48)
    assert train[(0, 123)]["gt"].shape == (3, 48, 48)
    photos = lambda ds: {p[1].split("/")[-1].rsplit("_", 1)[0] for p in ds.pairs}  # noqa: E731
    assert photos(train) == {"coins", "moon"} and photos(val) == {"chelsea"}


def test_tiny_quickstart_run_prints_comparison(tmp_path, capsys, no_network):
    """The quick-start options end to end, shrunk: the run ends with input vs restored metrics
    and one side-by-side image per held-out photo."""
    net = dict(TINY_NET, identity_init=True)
    args = ["-opt", str(ROOT / "options" / "quickstart.yml"), "--set", f"path.data_root={tmp_path / 'D'}",
            "--set", f"path.root={tmp_path}", "--set", "num_gpu=0", "--set", "train.total_iter=2",
            "--set", "train.scheduler.periods=[2]", "--set", "val.val_freq=2", "--set", "logger.print_freq=1",
            "--set", "datasets.train.gt_size=32", "--set", "datasets.train.batch_size_per_gpu=2",
            "--set", "datasets.train.degradation={photos: [coins], variants: 2, max_side: 64}",
            "--set", "datasets.val.degradation={photos: [chelsea, rocket], variants: 1, max_side: 64}",
            "--set", f"network_g={yaml.safe_dump(net, default_flow_style=True).strip()}"]
    assert train_main(args) == 0
    out = capsys.readouterr().out
    assert "iter 1/2" in out and "iter 2/2" in out
    assert "| image | input psnr | input ssim | restored psnr | restored ssim |" in out
    assert "mean psnr: input" in out and "-> restored" in out
    exp = tmp_path / "experiments" / "VmambaIR_Quickstart"
    images = sorted((exp / "visualization" / "QuickstartHeldOut" / "compare").iterdir())
    assert [p.name for p in images] == ["chelsea_0.png", "rocket_0.png"]
    for p in images:
        assert str(p) in out
        side = cv2.imread(str(p))
        gt = cv2.imread(str(tmp_path / "D" / "quickstart" / "val" / "target" / p.name))
        lq = cv2.imread(str(tmp_path / "D" / "quickstart" / "val" / "input" / p.name))
        w = gt.shape[1]
        assert side.shape == (gt.shape[0], 3 * w, 3)
        assert (side[:, :w] == lq).all() and (side[:, 2 * w:] == gt).all()   # rainy | restored | clean
    assert (exp / "models" / "net_g_latest.safetensors").is_file()
    assert "mean psnr" in (exp / "comparison.md").read_text()
