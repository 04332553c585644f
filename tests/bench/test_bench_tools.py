"""The benchmark tools' CPU logic: record schema, Markdown conversion, the generated page, the
time-to-train sum, and the stand-in for the authors' scan kernel. No timing."""
import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "scripts" / "bench"
sys.path.insert(0, str(BENCH))

import authors_code  # noqa: E402
import bench_record  # noqa: E402
import report  # noqa: E402
import time_to_train  # noqa: E402


def good_record(id="demo"):
    return bench_record.make_record(
        id, "A demo", [{"title": "t", "columns": ["what", "ms"], "rows": [["step", 1.5], ["restore", None]]}],
        section="Whole network", machine="test machine", date="2026-12-07", command="python demo.py",
        charts=[{"title": "c", "kind": "bar", "x": ["step", "restore"], "series": {"ms": [1.5, None]}}])


def test_a_complete_record_is_valid():
    assert bench_record.validate_record(good_record()) == []


@pytest.mark.parametrize("change, expected", [
    (lambda r: r.pop("command"), "missing key 'command'"),
    (lambda r: r["tables"][0]["rows"].append(["only one cell"]), "rows[2]"),
    (lambda r: r.update(date="yesterday"), "ISO date"),
    (lambda r: r["charts"][0]["series"].update(ms=[1.0]), "series['ms']"),
    (lambda r: r.update(tables=[], charts=[]), "at least one table or chart"),
    (lambda r: r["charts"][0].update(x=[], series={"ms": []}), "no x values"),
    (lambda r: r.update(id="no spaces allowed"), "id"),
])
def test_schema_violations_are_named(change, expected):
    rec = good_record()
    change(rec)
    problems = bench_record.validate_record(rec)
    assert any(expected in p for p in problems), problems


def test_write_record_refuses_an_invalid_record(tmp_path):
    rec = good_record()
    rec.pop("title")
    with pytest.raises(ValueError, match="title"):
        bench_record.write_record(rec, tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()


MARKDOWN = """# Model benchmark: demo

- GPU: Some GPU ; torch 9.9
- date: 2026-11-27T15:45
- command: `python scripts/bench/bench_model.py -opt x.yml`
- a note line

## Timing

| what | reference | fast |
|---|---|---|
| train | 10.0 ms, 1.00 GB | 5.0 ms, 0.50 GB |
| `a|b` | 1 | 2 |

```
void kernel_a(...)         0.00%       0.000us         0.00%       0.000us       0.000us     677.320us        64.66%     677.320us     677.320us             1
```
"""


def test_record_from_markdown_keeps_tables_metadata_and_text():
    rec = bench_record.record_from_markdown(MARKDOWN, "demo", "Whole network")
    assert bench_record.validate_record(rec) == []
    assert rec["title"] == "Model benchmark: demo"
    assert rec["machine"] == "Some GPU ; torch 9.9" and rec["date"] == "2026-11-27"
    assert rec["command"] == "python scripts/bench/bench_model.py -opt x.yml"
    timing, kernels = rec["tables"]
    assert timing["title"] == "Timing" and timing["columns"] == ["what", "reference", "fast"]
    assert timing["rows"] == [["train", "10.0 ms, 1.00 GB", "5.0 ms, 0.50 GB"], ["`a|b`", "1", "2"]]
    assert kernels["rows"] == [["void kernel_a(...)", "677.320", "64.66%", "1"]]
    assert "a note line" in rec["summary"]


def test_report_renders_valid_records_and_skips_invalid_ones(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    bench_record.write_record(good_record("demo"), data / "demo.json")
    (data / "broken.json").write_text(json.dumps({"schema": 1, "id": "broken"}))
    page = tmp_path / "README.md"
    assert report.main(["--data", str(data), "--out", str(page)]) == 0
    text = page.read_text()
    assert "### A demo" in text and "| step | 1.5 |" in text and "| restore | - |" in text
    assert "test machine" in text and "`python demo.py`" in text
    assert (tmp_path / "charts" / "demo-1.png").stat().st_size > 0
    assert "broken" not in text and "broken.json" in capsys.readouterr().err
    assert report.main(["--data", str(data), "--check"]) == 2


def test_time_to_train_sums_stage_times(tmp_path):
    stages = [{"batch": 8, "gt_size": 128, "input_size": 128, "iters": 1000,
               "paths": {"graphed": {"ms": 100.0, "peak_gb": 1.0, "extra_gb": 0.5}}},
              {"batch": 2, "gt_size": 256, "input_size": 256, "iters": 3000,
               "paths": {"graphed": {"ms": 60.0, "peak_gb": 1.0, "extra_gb": 0.5}}}]
    rec = good_record("model_demo")
    rec["figures"] = {"recipe": "options/demo.yml", "stages": stages}
    src = bench_record.write_record(rec, tmp_path / "model_demo.json")
    out = tmp_path / "ttt.json"
    assert time_to_train.main([str(src), "--ddp-efficiency", "0.5", "--json", str(out)]) == 0
    fig = json.loads(out.read_text())["figures"]["recipes"]["options/demo.yml:graphed"]
    hours = (0.1 * 1000 + 0.06 * 3000) / 3600
    assert fig["one_gpu_hours"] == pytest.approx(hours)
    assert fig["8_gpu_hours"] == pytest.approx(hours / 0.5)


def test_time_to_train_reads_a_recompile_record_with_the_recipes_iterations(tmp_path):
    """bench_recompile.py records carry step times per stage but not the iterations: those come
    from the recipe its command names (options/derain.yml: six progressive stages)."""
    import yaml
    iters = yaml.safe_load((bench_record.REPO_ROOT / "options" / "derain.yml").read_text())["datasets"]["train"]["iters"]
    step_ms = [100.0, 110.0, 120.0, 130.0, 140.0, 150.0]
    rec = good_record("recompile_demo")
    rec["command"] = "python scripts/bench/bench_recompile.py -opt options/derain.yml"
    rec["figures"] = {"stages": {"new": [{"batch": 1, "gt_size": 64, "input_size": 64, "first_iteration_s": 1.0,
                                          "step_ms": ms} for ms in step_ms]}}
    src = bench_record.write_record(rec, tmp_path / "recompile_demo.json")
    out = tmp_path / "ttt.json"
    assert time_to_train.main([str(src), "--ddp-efficiency", "1.0", "--json", str(out)]) == 0
    fig = json.loads(out.read_text())["figures"]["recipes"]["options/derain.yml:graphed"]
    assert fig["one_gpu_hours"] == pytest.approx(sum(ms / 1000 * n for ms, n in zip(step_ms, iters)) / 3600)
    # A record whose stage count differs from the recipe's is refused, not summed.
    rec["figures"]["stages"]["new"].pop()
    bench_record.write_record(rec, src)
    assert time_to_train.main([str(src), "--json", str(out)]) == 2


def test_time_to_train_takes_a_single_stage_recipes_training_row(tmp_path):
    """A bench_model.py record without --stages still times a single-stage recipe when its training
    row has the recipe's batch, input size and activation_checkpointing mode; a later record of
    the same recipe and path replaces the earlier one unless it has no time for it."""
    rows = {"train": {"graphed": {"ms": 40.0, "peak_gb": 4.0, "extra_gb": 0.0}},
            "train, recompute ffn": {"authors": {"ms": 200.0, "peak_gb": 9.0, "extra_gb": 9.0},
                                     "graphed": {"ms": 50.0, "peak_gb": 3.0, "extra_gb": 0.0}}}
    rec = good_record("model_sr")
    # options/realsr_x4_psnr.yml: batch 9, GT 256 at x4 (input 64), activation_checkpointing ffn
    rec["figures"] = {"recipe": "options/realsr_x4_psnr.yml", "stages": [],
                      "train": {"batch": 9, "size": 64, "rows": rows}}
    src = bench_record.write_record(rec, tmp_path / "model_sr.json")
    out = tmp_path / "ttt.json"
    assert time_to_train.main([str(src), "--ddp-efficiency", "1.0", "--json", str(out)]) == 0
    figs = json.loads(out.read_text())["figures"]["recipes"]
    iters = 1_000_000
    assert figs["options/realsr_x4_psnr.yml:graphed"]["one_gpu_hours"] == pytest.approx(0.05 * iters / 3600)
    assert figs["options/realsr_x4_psnr.yml:authors"]["one_gpu_hours"] == pytest.approx(0.2 * iters / 3600)

    later = good_record("model_sr_later")
    later["figures"] = {"recipe": "options/realsr_x4_psnr.yml", "stages": [{
        "batch": 9, "gt_size": 256, "input_size": 64, "iters": iters,
        "paths": {"graphed": {"ms": 45.0, "peak_gb": 3.0, "extra_gb": 0.0}, "authors": None}}]}
    src2 = bench_record.write_record(later, tmp_path / "model_sr_later.json")
    assert time_to_train.main([str(src), str(src2), "--ddp-efficiency", "1.0", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    figs = result["figures"]["recipes"]
    assert figs["options/realsr_x4_psnr.yml:graphed"]["one_gpu_hours"] == pytest.approx(0.045 * iters / 3600)
    assert figs["options/realsr_x4_psnr.yml:authors"]["one_gpu_hours"] == pytest.approx(0.2 * iters / 3600)
    assert len(result["tables"][0]["rows"]) == 2  # one row per recipe and path

    # A training row at another size than the recipe's stage is not a stage time.
    rec["figures"]["train"]["size"] = 128
    bench_record.write_record(rec, src)
    assert time_to_train.main([str(src), "--json", str(out)]) == 2


def test_reference_scan_matches_the_kernel_signature_and_gradients():
    """The CPU stand-in for the authors' selective_scan_cuda_core: fwd returns [y, x], bwd the
    gradients of sum(y * dout), checked against autograd through our reference scan."""
    from vmambair.ops.scan_reference import scan_reference

    torch.manual_seed(0)
    b, d, L, N, G = 2, 8, 6, 3, 4
    u, delta = torch.randn(b, d, L, dtype=torch.float64), torch.randn(b, d, L, dtype=torch.float64)
    A = -torch.rand(d, N, dtype=torch.float64)
    B, C = torch.randn(b, G, N, L, dtype=torch.float64), torch.randn(b, G, N, L, dtype=torch.float64)
    D, bias = torch.randn(d, dtype=torch.float64), torch.randn(d, dtype=torch.float64)
    kernel = authors_code.reference_scan_module()
    y, _ = kernel.fwd(u, delta, A, B, C, D, bias, True, 1)
    torch.testing.assert_close(y, scan_reference(u, delta, A, B, C, D, bias, True))
    dout = torch.randn_like(y)
    grads = kernel.bwd(u, delta, A, B, C, D, bias, dout, None, True, 1)
    leaves = [t.clone().requires_grad_(True) for t in (u, delta, A, B, C, D, bias)]
    expected = torch.autograd.grad((scan_reference(*leaves, delta_softplus=True) * dout).sum(), leaves)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want)


def test_a_folder_that_is_not_their_checkout_is_refused(tmp_path):
    with pytest.raises(authors_code.AuthorsCodeError, match="not a checkout"):
        authors_code.load_authors_network(tmp_path, "derain")
    with pytest.raises(authors_code.AuthorsCodeError, match="no such folder"):
        authors_code.load_authors_network(tmp_path / "missing", "derain")


def test_bench_precision_tiny_on_the_cpu_reports_accumulation_and_a_deterministic_rerun(tmp_path):
    """The script end to end on the CPU (tiny network): its record holds the loss curves of both
    networks, and on this deterministic path the rerun is identical while K=2 differs from K=1 only
    by float rounding, in the first gradients as in the losses."""
    import bench_precision
    out = tmp_path / "p.json"
    assert bench_precision.main(["--tiny", "--cpu", "--budget-s", "100000", "--json", str(out),
                                 "--md", str(tmp_path / "p.md"), "--plot", str(tmp_path / "p.png")]) == 0
    fig = json.loads(out.read_text())["figures"]
    assert {"curves deraining", "curves real-world x4"} <= set(fig)
    acc = fig["accumulation"]
    assert acc["first_grad_relative_difference"]["rerun"] == 0.0
    assert acc["max_relative_difference"]["rerun"] == 0.0
    assert 0.0 < acc["first_grad_relative_difference"]["K=2"] < 1e-5
    assert acc["max_relative_difference"]["K=2"] < 1e-5


def test_train_curve_without_updates_leaves_the_weights_as_they_were():
    """Iterations listed in no_update compute the loss but change nothing: the loss at the first
    updating iteration is the untouched network's loss on that batch."""
    import torch
    import bench_precision
    cpu = torch.device("cpu")
    batches = bench_precision.make_batches(4, 2, 16, 1, cpu, seed=3)
    skipped_model = bench_precision.build_model(bench_precision.TINY_NET, "fp32", cpu, seed=5)
    losses, skipped = bench_precision.train_curve(skipped_model, batches, no_update={1, 2})
    assert skipped == [1, 2]
    fresh = bench_precision.build_model(bench_precision.TINY_NET, "fp32", cpu, seed=5)
    fresh_losses, _ = bench_precision.train_curve(fresh, batches[2:])
    assert losses[2] == pytest.approx(fresh_losses[0], rel=1e-6)
    assert losses[3] == pytest.approx(fresh_losses[1], rel=1e-5)
    normal = bench_precision.build_model(bench_precision.TINY_NET, "fp32", cpu, seed=5)
    normal_losses, _ = bench_precision.train_curve(normal, batches)
    assert normal_losses[0] == pytest.approx(losses[0], rel=1e-6)
    assert abs(normal_losses[2] - losses[2]) > 1e-6  # two updates did happen in the normal run


def test_the_initialisation_judge_tells_one_distribution_from_another():
    """compare_authors_init.judge passes two samples of one initialisation and names a different
    spread, mean or range."""
    import torch
    import compare_authors_init as cai
    g = torch.Generator().manual_seed(0)
    normal = lambda n, std=1.0, mean=0.0: torch.randn(n, generator=g, dtype=torch.float64) * std + mean  # noqa: E731
    uniform = lambda n, bound: (torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1) * bound  # noqa: E731
    assert cai.judge(normal(20000), normal(20000)) is None
    assert cai.judge(uniform(20000, 0.1), uniform(20000, 0.1)) is None
    assert cai.judge(torch.ones(100, dtype=torch.float64), torch.ones(100, dtype=torch.float64)) is None
    assert "std" in cai.judge(normal(20000), normal(20000, std=1.2))
    assert "mean" in cai.judge(normal(20000), normal(20000, mean=0.2))
    # Same spread to 1 %, but one is uniform on a wider range than the other's cut-off normal.
    assert "range" in cai.judge(uniform(20000, 0.1), uniform(20000, 0.1).clamp(-0.095, 0.095) * 1.03)
    assert "constants" in cai.judge(torch.ones(100, dtype=torch.float64), torch.zeros(100, dtype=torch.float64))
    assert cai.tensor_kind("encoder2.3.oss.channel_scan.ssm.A_logs") == "encoder*.N.oss.channel_scan.ssm.A_logs"


def _tiny_copy(tmp_path, name: str, **train_changes):
    """options/<name>.yml with a tiny network and discriminator and small patches (CPU)."""
    import yaml
    raw = yaml.safe_load((bench_record.REPO_ROOT / "options" / f"{name}.yml").read_text())
    scale = int(raw.get("scale", 1))
    raw["num_gpu"] = 0
    raw["network_g"] = {"type": "VmambaIR", "dim": 8, "num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1,
                        "scale": scale}
    if "network_d" in raw:
        raw["network_d"]["num_feat"] = 4
    ds = raw["datasets"]["train"]
    ds.update(num_worker_per_gpu=0, **train_changes)
    if "degradation" in ds:
        ds["degradation"].update(crop_pad_size=72, queue_size=4)
    raw["train"]["precision"] = "fp32"
    path = tmp_path / f"{name}.yml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_recipe_step_runs_train_py_per_stage_and_feeds_time_to_train(tmp_path):
    """bench_recipe_step.py runs the real trainer on a synthetic set: a GAN recipe (discriminator,
    random-weight VGG19) and a progressive one (every stage), and its record sums in time_to_train."""
    import bench_recipe_step
    gan = _tiny_copy(tmp_path, "realsr_x4_gan", gt_size=32, batch_size_per_gpu=2)
    prog = _tiny_copy(tmp_path, "derain", mini_gt_sizes=[16, 24], mini_batch_sizes=[2, 1], iters=[1000, 500],
                      gt_size=24)
    out = tmp_path / "steps.json"
    rc = bench_recipe_step.main([str(gan), str(prog), "--stage-iters", "4", "--print-freq", "2",
                                 "--skip-windows", "1", "--images", "3", "--image-size", "96",
                                 "--work", str(tmp_path / "work"), "--json", str(out)])
    assert rc == 0
    rec = json.loads(out.read_text())
    assert bench_record.validate_record(rec) == []
    by_recipe = {r["recipe"]: r["stages"] for r in rec["figures"]["recipes"]}
    gan_stages, prog_stages = by_recipe[str(gan)], by_recipe[str(prog)]
    assert [(s["batch"], s["gt_size"], s["iters"]) for s in prog_stages] == [(2, 16, 1000), (1, 24, 500)]
    assert [(s["batch"], s["gt_size"]) for s in gan_stages] == [(2, 32)]
    # the trainer logged every window of both stages, and each stage's time is from its own windows
    log = rec["figures"]["logs"][str(prog)]
    assert [r["iter"] for r in log] == [2, 4, 6, 8]
    assert prog_stages[1]["paths"]["train.py"]["ms"] == pytest.approx(1000 / log[3]["it_per_s"], rel=1e-3)
    assert prog_stages[1]["first_window_s"] == pytest.approx(2 / log[2]["it_per_s"], abs=0.06)
    assert prog_stages[1]["data_wait_ms"] == pytest.approx(log[3]["data_ms"], abs=0.06)
    assert all(s["paths"]["train.py"]["ms"] > 0 for s in gan_stages + prog_stages)
    ttt = tmp_path / "ttt.json"
    assert time_to_train.main([str(out), "--ddp-efficiency", "1.0", "--json", str(ttt)]) == 0
    fig = json.loads(ttt.read_text())["figures"]["recipes"][f"{prog}:train.py"]
    expected = sum(s["paths"]["train.py"]["ms"] / 1000 * s["iters"] for s in prog_stages) / 3600
    assert fig["one_gpu_hours"] == pytest.approx(expected)


def test_recipe_step_keeps_the_stages_a_stopped_run_logged(tmp_path, monkeypatch):
    """--recipe-timeout: a train.py stopped at the limit still yields the stages it logged. (The
    stop is simulated: the child runs to its end, then the call reports a timeout, as
    subprocess.run does, with the output so far.)"""
    import subprocess
    import bench_recipe_step
    real_run = subprocess.run

    def run_then_time_out(cmd, timeout=None, **kw):
        proc = real_run(cmd, **kw)
        assert timeout == 7.0
        raise subprocess.TimeoutExpired(cmd, timeout, output=proc.stdout, stderr=proc.stderr)

    monkeypatch.setattr(bench_recipe_step.subprocess, "run", run_then_time_out)
    prog = _tiny_copy(tmp_path, "derain", mini_gt_sizes=[16, 24], mini_batch_sizes=[2, 1], iters=[1000, 500],
                      gt_size=24)
    out = tmp_path / "steps.json"
    rc = bench_recipe_step.main([str(prog), "--stage-iters", "2", "--print-freq", "1", "--skip-windows", "0",
                                 "--images", "3", "--image-size", "64", "--recipe-timeout", "7",
                                 "--work", str(tmp_path / "work"), "--json", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())["figures"]["recipes"][0]
    assert res["timed_out"] is True
    assert all(s["paths"]["train.py"]["ms"] > 0 for s in res["stages"])


def test_write_record_into_a_folder_names_the_file_by_id(tmp_path):
    rec = good_record("in_folder")
    assert bench_record.write_record(rec, tmp_path) == tmp_path / "in_folder.json"
    assert bench_record.write_record(rec, str(tmp_path / "new") + "/") == tmp_path / "new" / "in_folder.json"
    assert json.loads((tmp_path / "new" / "in_folder.json").read_text())["id"] == "in_folder"


@pytest.mark.parametrize("item, named", [("no_such_switch=1", "no_such_switch"), ("effn_align=-3", "effn_align"),
                                          ("effn_align", "SWITCH=VALUE")])
def test_bench_model_refuses_a_bad_runtime_switch_before_anything_runs(item, named, capsys):
    """--runtime SWITCH=VALUE goes through vmambair.runtime.configure: an unknown switch, a bad
    value or a missing '=' is an error naming it (checked before the GPU is even looked for)."""
    import bench_model
    from vmambair import runtime
    before = runtime.get().effn_align
    assert bench_model.main(["-opt", "options/derain.yml", "--runtime", item]) == 2
    assert named in capsys.readouterr().err
    assert runtime.get().effn_align == before


class _FakeCuda:
    """The few torch.cuda calls bench_model's bench() / memory_table() make, without a GPU: an
    allocator whose 'allocated bytes' the closures under test move."""

    def __init__(self):
        self.allocated, self.peak, self.history, self.events = 0, 0, None, []

    def install(self, monkeypatch):
        cuda = torch.cuda
        monkeypatch.setattr(cuda, "synchronize", lambda *a: None)
        monkeypatch.setattr(cuda, "empty_cache", lambda: None)
        monkeypatch.setattr(cuda, "current_device", lambda: 0)
        monkeypatch.setattr(cuda, "memory_allocated", lambda *a: self.allocated)
        monkeypatch.setattr(cuda, "max_memory_allocated", lambda *a: self.peak)
        monkeypatch.setattr(cuda, "reset_peak_memory_stats", lambda *a: setattr(self, "peak", self.allocated))
        monkeypatch.setattr(cuda.memory, "_record_memory_history",
                            lambda enabled="all", **kw: setattr(self, "history", enabled))
        monkeypatch.setattr(cuda.memory, "_snapshot", lambda: {"segments": [], "device_traces": [list(self.events)]})

    def alloc(self, addr, size):
        self.allocated += size
        self.peak = max(self.peak, self.allocated)
        if self.history:
            self.events.append({"action": "alloc", "addr": addr, "size": size,
                                "frames": [{"filename": "/r/vmambair/arch.py", "line": 7, "name": "forward"}]})

    def free(self, addr, size):
        self.allocated -= size
        if self.history:
            self.events.append({"action": "free_completed", "addr": addr, "size": size})


def test_bench_with_cudnn_benchmark_runs_the_trials_in_a_compiled_step_before_the_graphed_peak(monkeypatch):
    """With --cudnn-benchmark, cuDNN's algorithm trials (with their workspaces) happen at the first
    convolution of each shape; the graphed path's peak is taken while recording, so bench() runs one
    compiled step at the same sizes first and the recorded peak leaves the trials out."""
    import bench_model
    fake = _FakeCuda()
    fake.install(monkeypatch)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    tried = set()  # the convolution shapes cuDNN has timed
    calls = []

    def make(amp, path):
        calls.append(path)

        def step():
            if "conv" not in tried:  # the trials: a 5 GB workspace, freed again
                tried.add("conv")
                fake.alloc(1, 5 << 30)
                fake.free(1, 5 << 30)
            fake.alloc(2, 1 << 30)  # the step's own memory
            fake.free(2, 1 << 30)
        return step

    ms, extra, peak = bench_model.bench(make, "graphed", warmup=1, iters=2)
    assert calls == ["compiled", "graphed"]
    assert peak == 1.0  # GB: the step's, not the trials' 5
    # the control: without the compiled step first, the graphed recording's peak holds the trials
    tried.clear()
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    calls.clear()
    assert bench_model.bench(make, "graphed", warmup=1, iters=2)[2] == 5.0 and calls == ["graphed"]


def test_memory_table_lists_what_is_alive_at_the_peak(monkeypatch, tmp_path):
    import pickle

    import bench_model
    fake = _FakeCuda()
    fake.install(monkeypatch)
    fake.allocated = 2 << 30  # weights and inputs, allocated before recording

    def make_fn():
        def call():
            fake.alloc(10, 3 << 30)
            fake.alloc(11, 1 << 30)
            fake.free(10, 3 << 30)
            fake.free(11, 1 << 30)
        return call

    text = bench_model.memory_table(make_fn, graphed=False, label="fast: infer 1024",
                                    pickle_path=str(tmp_path / "s.pickle"), top=5)
    assert "allocated before: 2.00 GB; peak above it: 4.00 GB (total 6.00 GB)" in text
    assert "| `arch.py:7 forward` | 4.000 | 2 |" in text
    assert fake.history is None  # recording switched off again
    with open(tmp_path / "s.pickle", "rb") as f:
        assert len(pickle.load(f)["device_traces"][0]) == 4  # the recorded call only, not the warm-ups


def test_diagnosed_calls_cover_each_paths_training_steps_and_first_restore(monkeypatch):
    """--profile and --memory-snapshot look at the same calls: per path, the training step of each
    --checkpointing mode, then the first inference size, each built under the path's precision."""
    import argparse

    import bench_model
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(bench_model, "make_train_step", lambda net, scale, b, s, path, amp: ("train", net, b, s, path))
    monkeypatch.setattr(bench_model, "make_inference", lambda net, s, path, amp: ("infer", s, path))
    args = argparse.Namespace(paths=["fast", "graphed"], checkpointing=["none", "ffn"], train_batch=4, train_size=32,
                              infer_sizes=[256, 1024])
    got = [(path, what, make_fn()) for path, what, make_fn in
           bench_model.diagnosed_calls(args, {"type": "VmambaIR"}, 1)]
    assert [(p, w) for p, w, _ in got] == [(p, w) for p in ("fast", "graphed")
                                           for w in ("train", "train, recompute ffn", "infer 256")]
    assert got[1][2][1]["activation_checkpointing"] == "ffn" and got[1][2][2:] == (4, 32, "fast")
    assert got[-1][2] == ("infer", 256, "graphed")


def test_bench_scan_directions_on_the_cpu_writes_a_record_with_equal_outputs(tmp_path):
    """bench_scan_directions: one child process per setting of inference_scan_directions, a valid
    record with a row each; 1 direction at a time gives exactly the output of all four at once
    (the same additions in the same order), so its difference cell is 0."""
    import subprocess
    import yaml
    from tests.helpers import TINY_NET

    opt = tmp_path / "net.yml"
    opt.write_text(yaml.safe_dump({"network_g": dict(TINY_NET)}))
    res = subprocess.run([sys.executable, str(BENCH / "bench_scan_directions.py"), "-opt", str(opt), "--size", "40",
                          "--settings", "4", "1", "--json", str(tmp_path) + "/", "--id", "dirs"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    rec = json.loads((tmp_path / "dirs.json").read_text())
    assert bench_record.validate_record(rec) == []
    rows = rec["tables"][0]["rows"]
    assert [r[0] for r in rows] == ["4", "1"] and float(rows[1][3]) == 0.0
    assert all(float(r[1]) > 0 for r in rows)
