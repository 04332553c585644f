"""test.py: the sets present are evaluated (others skipped with a note), any image size, tiles
and self-ensemble, and the Markdown / CSV tables of set x metric with image counts."""
import pytest
import torch
import yaml

import vmambair  # noqa: F401
from vmambair.archs import VmambaIR
from vmambair.engine.checkpoint import save_network
from vmambair.apps.test import run_benchmark

from tests.helpers import ROOT, TINY_NET, make_pairs, one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def test_table_over_present_sets(tmp_path, capsys):
    data = tmp_path / "Datasets"
    make_pairs(data / "test" / "Rain100H", 2, size=(19, 23))
    make_pairs(data / "test" / "Test100", 3, size=(16, 40))
    torch.manual_seed(0)
    kwargs = {k: v for k, v in TINY_NET.items() if k != "type"}
    save_network(VmambaIR(**kwargs), tmp_path / "net_g.pth", safetensors=True)

    raw = yaml.safe_load((ROOT / "options" / "test_derain.yml").read_text())
    raw["network_g"] = dict(TINY_NET)
    raw["path"].update(root=str(tmp_path), data_root=str(data), pretrain_network_g=str(tmp_path / "net_g.safetensors"))
    raw["val"].update(save_img=True, tile=16, tile_overlap=4)
    opt = tmp_path / "test.yml"
    opt.write_text(yaml.safe_dump(raw))

    assert run_benchmark(["-opt", str(opt), "--set", "num_gpu=0"]) == 0
    out = capsys.readouterr().out
    assert "skipping test set Rain100L" in out and "skipping test set Test2800" in out
    results = tmp_path / "results" / "VmambaIR_Deraining_test"
    csv = (results / "metrics.csv").read_text().splitlines()
    assert csv[0] == "set,images,psnr,ssim"
    assert csv[1].startswith("Rain100H,2,") and csv[2].startswith("Test100,3,")
    md = (results / "metrics.md").read_text()
    assert "| Rain100H | 2 |" in md and "mean (of sets)" in md
    assert sorted(p.name for p in (results / "Test100").iterdir()) == ["0.png", "1.png", "2.png"]
    # One row per image: size, time and the fixed 16-pixel tiles (val.tile: 16).
    import csv
    rows = list(csv.DictReader((results / "per_image.csv").open()))
    assert [(r["set"], r["width"], r["height"]) for r in rows] == [("Rain100H", "23", "19")] * 2 + [
        ("Test100", "40", "16")] * 3
    assert all(r["tile"] == "16" and int(r["tiles"]) > 1 and float(r["seconds"]) > 0 for r in rows)

    # Self-ensemble through the same path; pth weights too.
    assert run_benchmark(["-opt", str(opt), "--set", "val.self_ensemble=true", "--set", "val.tile=null",
                      "--set", f"path.pretrain_network_g={tmp_path / 'net_g.pth'}", "--set", "num_gpu=0"]) == 0


def test_no_test_set_present_exits_2(tmp_path, capsys):
    assert run_benchmark(["-opt", str(ROOT / "options" / "test_derain.yml"),
                      "--set", f"path.data_root={tmp_path}", "--set", f"path.root={tmp_path}"]) == 2
    assert "No test set found" in capsys.readouterr().err
