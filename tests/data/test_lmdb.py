"""LMDB datasets (io_backend: {type: lmdb}) read what scripts/create_lmdb.py writes, item for item
as the image folders they were packed from: same crops and flips per seed, same progressive patch
sizes, a key missing from the LQ database named in the error, and a short training run."""
import importlib.util
import json
import shutil

import numpy as np
import pytest
import torch

import vmambair  # noqa: F401
from vmambair.apps.train import train_main
from vmambair.config import OptionsError, load_options
from vmambair.data.image_io import DataError
from vmambair.data.paired_dataset import PairedImageFolderDataset, ResumableBatchSampler
from vmambair.data.realesrgan_dataset import RealESRGANGTDataset
from vmambair.data.single_dataset import SingleImageFolderDataset

from tests.helpers import ROOT, make_pairs, one_thread, tiny_options  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def _create_lmdb(*args):
    spec = importlib.util.spec_from_file_location("create_lmdb", ROOT / "scripts" / "create_lmdb.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main([*map(str, args), "--workers", "1"])


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmdb")
    make_pairs(root / "set", 5, size=(24, 32), seed=3)
    assert _create_lmdb("-i", root / "set/target", root / "set/input",
                        "-o", root / "target.lmdb", root / "input.lmdb") == 0
    return root


def _paired(root, backend, **extra):
    gt, lq = ("target.lmdb", "input.lmdb") if backend == "lmdb" else ("set/target", "set/input")
    return {"dataroot_gt": str(root / gt), "dataroot_lq": str(root / lq), "io_backend": {"type": backend},
            "phase": "train", "gt_size": 16, "scale": 1, **extra}


def test_layout_is_basicsrs(packed):
    lines = (packed / "target.lmdb" / "meta_info.txt").read_text().splitlines()
    assert lines[0] == "0.png (24,32,3) 1" and len(lines) == 5
    assert (packed / "target.lmdb" / "data.mdb").is_file()


def test_paired_lmdb_items_equal_the_folder_items_across_patch_sizes(packed):
    disk, db = PairedImageFolderDataset(_paired(packed, "disk")), PairedImageFolderDataset(_paired(packed, "lmdb"))
    assert len(disk) == len(db) == 5
    sampler = ResumableBatchSampler(len(db), 2, seed=11, epoch=1)
    for patch in (16, 24):  # progressive stages
        disk.set_patch_size(patch), db.set_patch_size(patch)
        for batch in sampler:
            for item in batch:
                a, b = disk[item], db[item]
                assert a["gt"].shape[-1] == patch
                assert torch.equal(a["gt"], b["gt"]) and torch.equal(a["lq"], b["lq"])
                assert b["gt_path"].endswith(f"target.lmdb/{a['gt_path'].rsplit('/', 1)[1][:-4]}")
    val = PairedImageFolderDataset(_paired(packed, "lmdb", phase="val"))
    assert val[0]["gt"].shape == (3, 24, 32)


def test_gt_only_and_input_only_lmdb(packed):
    settings = {"dataroot_gt": str(packed / "target.lmdb"), "gt_size": 16, "io_backend": {"type": "lmdb"},
                "degradation": {"crop_pad_size": 24, "resize_range": [0.9, 1.1], "resize_range2": [0.9, 1.1]}}
    db = RealESRGANGTDataset(settings)
    disk = RealESRGANGTDataset({**settings, "dataroot_gt": str(packed / "set/target"), "io_backend": {"type": "disk"}})
    a, b = disk[(2, 123)], db[(2, 123)]
    assert torch.equal(a["gt"], b["gt"]) and torch.equal(a["kernel1"], b["kernel1"])
    single = SingleImageFolderDataset({"dataroot_lq": str(packed / "input.lmdb"), "io_backend": {"type": "lmdb"}})
    assert len(single) == 5 and single[0]["lq"].shape == (3, 24, 32)


def test_missing_key_is_named(packed, tmp_path):
    make_pairs(tmp_path / "short", 3, size=(24, 32), seed=3)
    assert _create_lmdb("-i", tmp_path / "short/input", "-o", tmp_path / "short_input.lmdb") == 0
    with pytest.raises(DataError, match=r"GT key '3' of LMDB .*target.lmdb' has no input pair: LMDB "
                                        r".*short_input.lmdb' has no key '3'"):
        PairedImageFolderDataset({**_paired(packed, "lmdb"), "dataroot_lq": str(tmp_path / "short_input.lmdb")})
    # A key listed but not stored (meta_info edited by hand) is named when read.
    shutil.copytree(packed / "input.lmdb", tmp_path / "edited.lmdb")
    with open(tmp_path / "edited.lmdb" / "meta_info.txt", "a") as f:
        f.write("ghost.png (24,32,3) 1\n")
    single = SingleImageFolderDataset({"dataroot_lq": str(tmp_path / "edited.lmdb"), "io_backend": {"type": "lmdb"}})
    with pytest.raises(DataError, match="has no image with key 'ghost'"):
        single[5]


def test_options_accept_lmdb_and_refuse_a_plain_folder(tmp_path, packed):
    base = ["datasets.train.io_backend={type: lmdb}"]
    with pytest.raises(OptionsError, match=r"datasets.train.dataroot_gt': .* is not an LMDB folder .*create_lmdb.py"):
        load_options(tiny_options(tmp_path), base)
    with pytest.raises(OptionsError, match="'datasets.train.io_backend.type' is 'petrel'; use 'disk'"):
        load_options(tiny_options(tmp_path), ["datasets.train.io_backend={type: petrel}"])


def test_training_from_lmdb_matches_training_from_folders(tmp_path):
    losses = {}
    for backend in ("disk", "lmdb"):
        root = tmp_path / backend
        root.mkdir()
        opt = tiny_options(root)
        over = ["--set", "train.total_iter=2", "--set", "val.val_freq=100"]
        if backend == "lmdb":
            data = root / "Datasets" / "train" / "Rain13K"
            assert _create_lmdb("-i", data / "target", data / "input", "-o", data / "target.lmdb",
                                data / "input.lmdb") == 0
            over += ["--set", "datasets.train.io_backend={type: lmdb}",
                     "--set", "datasets.train.dataroot_gt=train/Rain13K/target.lmdb",
                     "--set", "datasets.train.dataroot_lq=train/Rain13K/input.lmdb"]
        assert train_main(["-opt", str(opt), *over]) == 0
        lines = (root / "experiments/tiny/train_log.jsonl").read_text().splitlines()
        losses[backend] = [json.loads(x)["l_pix"] for x in lines if "l_pix" in json.loads(x)]
    assert len(losses["lmdb"]) == 2 and np.isfinite(losses["lmdb"]).all()
    assert losses["lmdb"] == losses["disk"]
