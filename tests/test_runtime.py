"""The runtime switches: one module, setters that check their values, environment variables as
initial values only, ``use`` restoring everything, and the FLOP counter independent of them."""
import subprocess
import sys

import pytest
import torch

from vmambair import runtime


def test_use_restores_every_switch_and_rejects_unknown_names():
    before = runtime.get()
    snapshot = (before.scan_backend, before.fused_max_pixels, before.scan_columns, before.effn_align)
    with runtime.use(scan_backend="torch", fused_max_pixels=5, scan_columns="transposed", effn_align=0):
        s = runtime.get()
        assert (s.scan_backend, s.fused_max_pixels, s.scan_columns, s.effn_align) == ("torch", 5, "transposed", 0)
    s = runtime.get()
    assert (s.scan_backend, s.fused_max_pixels, s.scan_columns, s.effn_align) == snapshot
    with pytest.raises(ValueError, match="Unknown runtime switch 'fused_pixels'"):
        runtime.configure(fused_pixels=3)
    with pytest.raises(ValueError, match="not a column mode"):
        runtime.set_scan_columns("diagonal")


def test_environment_gives_initial_values_and_bad_ones_name_the_variable():
    code = "from vmambair import runtime; s = runtime.get(); print(s.scan_backend, s.fused_max_pixels, s.scan_columns)"
    env = {"VMAMBAIR_SCAN_BACKEND": "reference", "VMAMBAIR_FUSED_MAX_PIXELS": "123", "VMAMBAIR_SCAN_COLUMNS": "staged",
           "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.split() == ["reference", "123", "staged"], out.stderr[-2000:]
    env["VMAMBAIR_FUSED_MAX_PIXELS"] = "lots"
    bad = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "VMAMBAIR_FUSED_MAX_PIXELS='lots' is not an integer" in bad.stderr


def test_ops_backend_follows_the_runtime_switch():
    from vmambair import ops
    with ops.use_backend("reference"):
        assert runtime.get().scan_backend == "reference"
        assert ops.resolve_backend(torch.device("cpu")).name == "reference"
    assert runtime.get().scan_backend == "auto"
    with pytest.raises(ops.BackendUnavailableError, match="Unknown selective-scan backend 'nope'"):
        ops.set_backend("nope")


def test_flop_count_does_not_depend_on_execution_switches():
    """The counter computes FLOPs from shapes (hooks), so EFFN alignment or the projections'
    execution do not change it; and the network runs real scans while counting."""
    from vmambair.apps.model_stats import count_flops
    from vmambair.archs import VmambaIR

    net = VmambaIR(dim=12, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1)
    counts = set()
    for align in (8, 0):
        for original in (False, True):
            with runtime.use(effn_align=align, original_projections=original):
                counts.add(count_flops(net, (1, 3, 16, 16)))
    assert len(counts) == 1 and counts.pop() > 0


def test_options_runtime_section_sets_the_switches(tmp_path):
    from vmambair.config import OptionsError, load_options
    from tests.helpers import tiny_options

    opt = tiny_options(tmp_path)
    with runtime.use():  # restores the switches afterwards
        load_options(opt, ["runtime.fused_max_pixels=1024", "runtime.scan_columns=transposed"])
        assert runtime.get().fused_max_pixels == 1024 and runtime.get().scan_columns == "transposed"
        with pytest.raises(OptionsError, match="section 'runtime': scan_columns='diagonal' is not a column mode"):
            load_options(opt, ["runtime.scan_columns=diagonal"])
        with pytest.raises(OptionsError, match="Unknown option 'runtime.columns'"):
            load_options(opt, ["runtime.columns=mixed"])


def test_activation_memory_budget_reaches_the_partitioner_and_keeps_the_gradients(monkeypatch):
    """The switch goes into torch._functorch's partitioner config when blocks are compiled: a block
    compiled under budget 0 saves far fewer bytes for its backward pass than under the default 1.0
    (it recomputes instead), with the same output and gradients."""
    import torch._functorch.config as functorch_config
    from vmambair.archs.vmambair_arch import OSSBlock

    monkeypatch.setattr(functorch_config, "activation_memory_budget", functorch_config.activation_memory_budget)
    with pytest.raises(ValueError, match="activation_memory_budget must be a number from 0 to 1, got 1.5"):
        runtime.set_activation_memory_budget(1.5)
    results = {}
    for budget in (1.0, 0.0):
        torch._dynamo.reset()
        torch.manual_seed(0)
        block = OSSBlock(8, scan_backend="torch")
        with runtime.use(activation_memory_budget=budget):
            runtime.apply_compile_settings()
            assert functorch_config.activation_memory_budget == budget
        # the partitioner of inductor's (min-cut, budget-aware) without inductor's code generation
        block.compile(backend="aot_eager_decomp_partition", fullgraph=True)
        saved = []

        def pack(t):
            saved.append(t.numel() * t.element_size())
            return t

        x = torch.rand(2, 8, 6, 6)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = block(x)
        out.square().mean().backward()
        results[budget] = out.detach(), [p.grad for p in block.parameters()], sum(saved)
    torch._dynamo.reset()
    (out1, grads1, bytes1), (out0, grads0, bytes0) = results[1.0], results[0.0]
    assert 0 < bytes0 < bytes1 / 4, (bytes0, bytes1)
    torch.testing.assert_close(out0, out1)
    for a, b in zip(grads0, grads1):
        torch.testing.assert_close(a, b)
