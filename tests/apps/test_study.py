"""scripts/study.py on the CPU: a tiny deraining study (two tiny configurations x two seeds, three
iterations each) writes its results JSON / CSV, its page, curves, bar chart, image grid and
archive, with finite numbers; bad study files and flags exit 2; a time limit skips runs but still
writes the report."""
import json
import math
import sys
import tarfile
from pathlib import Path

import cv2
import pytest
import yaml

from vmambair.apps.study import study_main

TINY = {
    "name": "tiny_study",
    "title": "tiny",
    "parts": [{
        "name": "derain", "task": "derain", "iters": 3, "seeds": [0, 1], "val_every": 2, "grid_images": 1,
        "data": {"train_photos": ["astronaut", "coins"], "held_out_photos": ["chelsea"], "train_max_side": 64,
                 "held_out_max_side": 48, "variants": 1, "held_out_variants": 1},
        "overrides": [
            "network_g={type: VmambaIR, dim: 8, num_blocks: [1, 1, 1, 1], num_refinement_blocks: 1, scale: 1}",
            "datasets.train.mini_gt_sizes=null", "datasets.train.mini_batch_sizes=null", "datasets.train.iters=null",
            "datasets.train.gt_size=32", "datasets.train.batch_size_per_gpu=2", "datasets.train.num_worker_per_gpu=0"],
        "configs": [{"name": "full", "options": "options/derain.yml"},
                    {"name": "V1", "options": "options/derain.yml", "overrides": ["network_g.ablation=V1"]}],
    }],
}


def _write_study(tmp_path, study=TINY):
    path = tmp_path / "study.yml"
    path.write_text(yaml.safe_dump(study))
    return path


def test_tiny_study_writes_results_page_and_pictures(tmp_path):
    pytest.importorskip("matplotlib")
    study = _write_study(tmp_path)
    out = tmp_path / "out"
    archive = tmp_path / "study.tar.gz"
    assert study_main([str(study), "--out", str(out), "--archive", str(archive)]) == 0

    report = out / "tiny_study" / "report"
    results = json.loads((report / "results.json").read_text())
    part = results["parts"]["derain"]
    runs = part["runs"]
    assert [(r["config"], r["seed"]) for r in runs] == [("full", 0), ("V1", 0), ("full", 1), ("V1", 1)]
    for r in runs:
        assert r["status"] == "ok", r
        assert r["iters"] == 3 and r["params_m"] > 0
        assert all(math.isfinite(v) for v in r["metrics"].values()) and set(r["metrics"]) == {"psnr", "ssim"}
        assert math.isfinite(r["ms_per_iter"]) and r["wall_s"] > 0
        assert r["val_curve"] and r["val_curve"][-1]["iter"] == 3
    assert runs[0]["params_m"] != runs[1]["params_m"]  # V1 is a different network
    # Seeds differ (initialisation and data order), and the summary keeps both values.
    full = next(s for s in part["summary"] if s["config"] == "full")
    assert full["seeds"] == [0, 1] and len(full["psnr"]["values"]) == 2
    assert full["psnr"]["min"] <= full["psnr"]["mean"] <= full["psnr"]["max"]

    # The floor is the rainy input's PSNR, computed here independently from the files.
    from basicsr.metrics import calculate_psnr
    gt = cv2.imread(str(out / "data" / "derain" / "held_out" / "gt" / "chelsea.png"))
    lq = cv2.imread(str(out / "data" / "derain" / "held_out" / "lq" / "chelsea.png"))
    assert part["floor"]["psnr"] == pytest.approx(calculate_psnr(lq, gt, 0, test_y_channel=True))
    assert part["floor"]["psnr"] < 99  # the rain changed the photo

    csv_rows = (report / "results.csv").read_text().strip().splitlines()
    assert len(csv_rows) == 1 + 4 and csv_rows[0].startswith("part,config,seed,status")
    page = (report / "README.md").read_text()
    assert "| full | " in page and "| V1 | " in page and "rainy input" in page
    for png in ("derain_psnr_bars.png", "derain_curves_full.png", "derain_curves_V1.png", "derain_grid_chelsea.png"):
        assert (report / png).stat().st_size > 1000 and f"({png})" in page
    assert len(list((report / "logs").glob("*.jsonl"))) == 4
    # The benchmark record (for benchmarks/data/) passes the report generator's schema check.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts" / "bench"))
    try:
        import bench_record
    finally:
        sys.path.pop(0)
    record = json.loads((report / "study_tiny_study.json").read_text())
    assert bench_record.validate_record(record) == []
    assert [r[0] for r in record["tables"][0]["rows"]] == ["rainy input (no training)", "full", "V1"]
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert "tiny_study/README.md" in names and "tiny_study/results.json" in names


def test_time_limit_skips_runs_but_writes_the_report(tmp_path):
    study = _write_study(tmp_path)
    out = tmp_path / "out"
    assert study_main([str(study), "--out", str(out), "--time-limit", "0.001", "--seeds", "0",
                       "--only", "full"]) == 1
    results = json.loads((out / "tiny_study" / "report" / "results.json").read_text())
    runs = results["parts"]["derain"]["runs"]
    assert [(r["config"], r["status"]) for r in runs] == [("full", "skipped")]
    assert "time limit" in runs[0]["error"]


@pytest.mark.parametrize("change, message", [
    (lambda s: s["parts"][0].update(task="denoise"), "task must be one of"),
    (lambda s: s["parts"][0].update(itres=3), "unknown key"),
    (lambda s: s["parts"][0]["configs"][1].update(init_from="nope"), "init_from 'nope'"),
    (lambda s: s["parts"][0]["configs"][0].update(options="options/missing.yml"), "does not exist"),
])
def test_bad_study_files_exit_2(tmp_path, capsys, change, message):
    study = json.loads(json.dumps(TINY))
    change(study)
    assert study_main([str(_write_study(tmp_path, study)), "--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err


def test_unknown_only_name_exits_2(tmp_path, capsys):
    assert study_main([str(_write_study(tmp_path)), "--out", str(tmp_path / "o"), "--only", "V9"]) == 2
    assert "--only names ['V9']" in capsys.readouterr().err


def test_fast_path_fallback_names_the_switch_that_failed():
    from vmambair.apps.study import fast_path_fallback
    from vmambair.engine.cuda_graph import GraphRecordingError

    class InductorError(RuntimeError):
        pass
    InductorError.__module__ = "torch._inductor.exc"  # where torch.compile's errors live

    try:
        try:
            raise InductorError("could not lower")
        except InductorError as inner:
            raise RuntimeError("step failed") from inner
    except RuntimeError as err:
        compiled = err
    assert fast_path_fallback(compiled, []) == "train.compile=false"
    assert fast_path_fallback(compiled, ["train.compile=false"]) is None  # already off: a real failure
    assert fast_path_fallback(GraphRecordingError("capture failed"), []) == "train.cuda_graph=false"
    assert fast_path_fallback(ValueError("bad pixel"), []) is None
