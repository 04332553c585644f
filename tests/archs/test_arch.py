"""The VmambaIR network: configurations, parameter counts, shapes, gradients, registry."""
import math

import pytest
import torch
import yaml

import vmambair  # noqa: F401
from vmambair.archs import ARCH_REGISTRY, VmambaIR, build_network
from vmambair.archs.vmambair_arch import ChannelScan, OSSModule, PlanarScan
from vmambair.apps.model_stats import count_flops, count_params

TASKS = {
    "derain": dict(num_blocks=[4, 4, 6, 8], num_refinement_blocks=2, scale=1),
    "sr_x4": dict(num_blocks=[14, 1, 1, 1], num_refinement_blocks=14, scale=4),
    "realsr_x4": dict(num_blocks=[6, 2, 2, 1], num_refinement_blocks=6, scale=4),
}


def test_realsr_param_count_matches_paper():
    n = count_params(VmambaIR(**TASKS["realsr_x4"]))
    assert abs(n / 10.50e6 - 1) < 1e-3, n


def test_param_count_by_hand_for_one_oss_module():
    """Count the OSS module's parameters from the paper's formulas (Section 4), independently of the code."""
    c, N = 96, 16
    R = math.ceil(c / 16)
    planar = 4 * ((R + 2 * N) * c + c * R + c + c * N + c)
    channel = 2 * ((R + 2 * N) * 1 + 1 * R + 1 + N + 1) + 2 * c
    expected = (c * 2 * c + 2 * c) + (c * 9 + c) + planar + 2 * c + channel + (c * c + c)
    assert count_params(OSSModule(c)) == expected


@pytest.mark.parametrize("task", list(TASKS))
def test_task_network_forward_backward_odd_size(task):
    torch.manual_seed(0)
    net = VmambaIR(**TASKS[task])
    H, W = (13, 21) if task == "derain" else (9, 11)
    x = torch.rand(1, 3, H, W)
    y = net(x)
    s = TASKS[task]["scale"]
    assert y.shape == (1, 3, H * s, W * s)
    y.mean().backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # every scan parameter takes part in the loss
    assert net.encoder1[0].oss.planar_scan.ssm.A_logs.grad.abs().sum() > 0
    assert net.encoder1[0].oss.channel_scan.ssm.dt_projs_bias.grad.abs().sum() > 0


def test_same_size_network_is_residual_at_init_scale():
    net = VmambaIR(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1)
    torch.nn.init.zeros_(net.tail.weight)
    x = torch.rand(2, 3, 10, 12)
    torch.testing.assert_close(net(x), x)


@pytest.mark.parametrize("scale", [2, 3, 4, 8])
def test_sr_scales(scale):
    net = VmambaIR(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, scale=scale)
    assert net(torch.rand(1, 3, 5, 7)).shape == (1, 3, 5 * scale, 7 * scale)


@pytest.mark.parametrize("bad", [5, 6, 16, 1.5])
def test_unsupported_scale_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="scale must be one of"):
        VmambaIR(scale=bad)


def test_ablations():
    base = dict(dim=16, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1)
    full = VmambaIR(**base)
    v1, v2, v3, v4 = (VmambaIR(**base, ablation=v) for v in ("V1", "V2", "V3", "V4"))
    assert v1.encoder1[0].oss.planar_scan.ssm.K == 1 and v1.encoder1[0].oss.channel_scan is None
    assert v2.encoder1[0].oss.planar_scan.ssm.K == 4 and v2.encoder1[0].oss.channel_scan is None
    assert v3.encoder1[0].ffn is None
    assert isinstance(v4.encoder1[0].oss.in_proj.proj, torch.nn.Linear)
    assert count_params(v4) == count_params(full)  # same weights, other layout
    # V4 computes the same function as the 1x1-conv network given the same weights
    target = v4.state_dict()
    v4.load_state_dict({k: v.reshape(target[k].shape) for k, v in full.state_dict().items()})
    x = torch.rand(1, 3, 8, 8)
    torch.testing.assert_close(v4(x), full(x), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="ablation must be one of"):
        VmambaIR(ablation="V9")


def test_yaml_to_registry_to_network():
    opt = yaml.safe_load("""
network_g:
  type: VmambaIR
  dim: 8
  num_blocks: [1, 1, 1, 1]
  num_refinement_blocks: 1
  scale: 2
network_d:
  type: UNetDiscriminatorSN
  num_in_ch: 3
  num_feat: 64
  skip_connection: true
""")
    g = build_network(opt["network_g"])
    d = build_network(opt["network_d"])
    assert isinstance(g, VmambaIR) and type(d).__name__ == "UNetDiscriminatorSN"
    assert ARCH_REGISTRY.get("VmambaIR") is VmambaIR
    out = d(g(torch.rand(1, 3, 16, 16)))
    assert out.shape == (1, 1, 32, 32)


def test_flops_count_scan_term():
    """The scan's FLOPs follow 9*b*d*L*N + b*d*L; doubling H doubles a planar scan's count."""
    ps = PlanarScan(8, rank=1, d_state=4, directions=4)

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = ps

        def forward(self, x):
            return self.p(x.expand(-1, 8, -1, -1))

    f1 = count_flops(Wrap(), (1, 1, 4, 4))
    f2 = count_flops(Wrap(), (1, 1, 8, 4))
    L, d, N = 16, 8, 4
    proj = 4 * L * d * (1 + 2 * N) + 4 * L * 1 * d
    assert f1 == 9 * 1 * 4 * d * L * N + 4 * d * L + proj
    assert f2 == 2 * f1


def test_channel_scan_shape():
    cs = ChannelScan(12, rank=1)
    assert cs(torch.rand(2, 12, 5, 3)).shape == (2, 12, 1, 1)


@pytest.mark.parametrize("mode", [True, "block", "ffn"])
def test_activation_checkpointing_gives_same_gradients(mode):
    from vmambair.archs.vmambair_arch import EFFN, OSSBlock
    torch.manual_seed(0)
    net = VmambaIR(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1)
    x = torch.rand(1, 3, 16, 16)
    net(x).square().mean().backward()
    want = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    net.set_activation_checkpointing(mode)
    recomputed = {type(m) for m in net.modules() if getattr(m, "checkpointing", False)}
    assert recomputed == ({EFFN} if mode == "ffn" else {OSSBlock})
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        net(x).square().mean().backward()
    for g, w in zip((p.grad for p in net.parameters()), want):
        torch.testing.assert_close(g, w)
    net.set_activation_checkpointing(False)
    assert not any(getattr(m, "checkpointing", False) for m in net.modules())
    full = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: full.append(t.numel()) or t, lambda t: t):
        net(x).square().mean().backward()
    assert sum(saved) < 0.9 * sum(full)  # the forward saved less for the backward


def test_activation_checkpointing_rejects_unknown_modes():
    with pytest.raises(ValueError, match="activation_checkpointing.*'ffn'.*got 'layers'"):
        VmambaIR(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, activation_checkpointing="layers")


def test_planar_projections_as_convolutions_match_the_original_einsums():
    """project_map (1x1 convs, multiplied-out dt pair) computes what the per-direction einsums do,
    values and gradients, and the network's output does not depend on which one runs."""
    from vmambair.archs.vmambair_arch import SSMParams, original_projections

    torch.manual_seed(0)
    ssm = SSMParams(4, 12, 3, 5).double()
    x = torch.randn(2, 12, 5, 7, dtype=torch.float64, requires_grad=True)
    got = ssm.project_map(x)
    want = ssm.project(x.reshape(2, 1, 12, 35).expand(2, 4, 12, 35))
    for g, w in zip(got, want):
        torch.testing.assert_close(g.reshape(w.shape), w)
    grads_got = torch.autograd.grad(sum((t * t).sum() for t in got), [x, ssm.x_proj_weight, ssm.dt_projs_weight])
    grads_want = torch.autograd.grad(sum((t * t).sum() for t in want), [x, ssm.x_proj_weight, ssm.dt_projs_weight])
    for g, w in zip(grads_got, grads_want):
        torch.testing.assert_close(g, w)

    net = VmambaIR(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, scan_backend="torch").double().eval()
    inp = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        fast = net(inp)
        with original_projections():
            ref = net(inp)
    torch.testing.assert_close(fast, ref)


def test_effn_aligned_execution_is_the_same_function():
    """EFFN on zero-padded (aligned) weights gives the unpadded layer's output and gradients."""
    from vmambair import runtime
    from vmambair.archs.vmambair_arch import EFFN

    torch.manual_seed(0)
    ffn = EFFN(12).double()  # hidden 31: padded to 32
    x = torch.randn(2, 12, 5, 6, dtype=torch.float64, requires_grad=True)
    results = []
    for align in (8, 0):
        with runtime.use(effn_align=align):
            out = ffn(x)
            results.append((out, torch.autograd.grad((out ** 2).sum(), [x] + list(ffn.parameters()))))
    (o1, g1), (o2, g2) = results
    torch.testing.assert_close(o1, o2)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("align", [8, 0])
def test_effn_depthwise_slices_are_the_same_function(monkeypatch, align):
    """Maps over DEPTHWISE_MAX_ELEMENTS run the depthwise convolution per gate half and in channel
    slices (cuDNN's 64-bit-index kernel is ~100x slower): same output and gradients as one call."""
    from vmambair import runtime
    from vmambair.archs import vmambair_arch as arch

    torch.manual_seed(0)
    ffn = arch.EFFN(12).double()  # hidden 31 (padded to 32 with align 8)
    monkeypatch.setattr(runtime.get(), "effn_align", align)
    x = torch.randn(2, 12, 5, 6, dtype=torch.float64, requires_grad=True)
    results = []
    calls = []
    real_conv = arch.F.conv2d
    monkeypatch.setattr(arch.F, "conv2d", lambda *a, **k: calls.append(a[0].shape[1]) or real_conv(*a, **k))
    for limit in (arch.DEPTHWISE_MAX_ELEMENTS, 2 * 5 * 6 * 7):  # the second: slices of 7 channels
        monkeypatch.setattr(arch, "DEPTHWISE_MAX_ELEMENTS", limit)
        calls.clear()
        out = ffn(x)
        results.append((out, torch.autograd.grad((out ** 2).sum(), [x] + list(ffn.parameters()))))
    half = 32 if align else 31
    slices = [7] * (half // 7) + [half % 7]  # 7, 7, 7, 7 and the rest
    assert calls[1:-1] == slices * 2  # (project_in,) each gate half in slices (, project_out)
    (o1, g1), (o2, g2) = results
    torch.testing.assert_close(o1, o2)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


def test_compile_blocks_traces_each_block_whole_and_keeps_the_function():
    """compile_blocks: every OSS block traces as one graph (fullgraph, no breaks in the scan's
    dispatch glue), parameter names are unchanged, and the output is the eager output."""
    torch.manual_seed(0)
    net = VmambaIR(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, scan_backend="torch").eval()
    x = torch.rand(1, 3, 16, 16)
    names = [n for n, _ in net.named_parameters()]
    with torch.no_grad():
        want = net(x)
        net.compile_blocks(backend="eager", fullgraph=True)
        got = net(x)
    assert [n for n, _ in net.named_parameters()] == names
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("part", ["block", "ffn"])
def test_compiled_block_with_checkpointing_traces_whole_and_gives_the_eager_gradients(part):
    """Activation checkpointing sits inside the block's (or its EFFN's) forward, so a compiled
    block traces it as one graph (fullgraph) and recomputes in the backward; the gradients are
    unchanged."""
    from vmambair.archs.vmambair_arch import OSSBlock
    results = []
    for compiled in (False, True):
        torch.manual_seed(0)
        block = OSSBlock(8, scan_backend="torch").double()
        (block if part == "block" else block.ffn).checkpointing = compiled
        if compiled:
            block.compile(backend="eager", fullgraph=True)
        x = torch.rand(2, 8, 12, 12, dtype=torch.float64)
        block(x).square().mean().backward()
        results.append([p.grad for p in block.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_sr_tail_in_strips_is_the_whole_image_result(scale, monkeypatch):
    """Inference runs the SR tail in strips with a halo; the output equals the one-piece tail."""
    torch.manual_seed(0)
    net = VmambaIR(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, scale=scale,
                   scan_backend="torch").double().eval()
    feat = torch.randn(1, 16, 13, 7, dtype=torch.float64)
    with torch.no_grad():
        whole = net.tail(feat)
        monkeypatch.setattr(VmambaIR, "tail_strip_pixels", 2 * 7)  # strips of 2 rows
        strips = net.run_tail(feat)
    assert strips.shape == whole.shape
    torch.testing.assert_close(strips, whole)


def test_inference_scan_directions_splits_only_unfused_scans_without_gradients(monkeypatch):
    """The runtime switch inference_scan_directions: without gradients the planar scans run their
    directions in groups of that size (one scan call per group, spied here), with the network's
    output unchanged; with gradients, or where the fused op runs, all four go at once."""
    import importlib
    from vmambair import ops, runtime
    scan_module = importlib.import_module("vmambair.ops.selective_scan")  # the module, not the function

    torch.manual_seed(0)
    net = VmambaIR(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, scan_backend="torch").eval()
    x = torch.rand(1, 3, 16, 12)
    real = scan_module._BACKENDS["torch"].fn
    widths = []
    monkeypatch.setattr(scan_module._BACKENDS["torch"], "fn", lambda u, *a, **k: widths.append(u.shape[1]) or real(u, *a, **k))
    outs = {}
    for n in (4, 2, 1):
        widths.clear()
        with runtime.use(inference_scan_directions=n), torch.no_grad():
            outs[n] = net(x)
        planar = [w for w in widths if w > 2]  # a channel scan's sequences: 2 directions x 1 channel
        assert all(w % n == 0 and w // n in (8, 16, 32, 64) for w in planar), (n, planar)  # n x a level's width
        assert len(planar) == 4 // n * sum(isinstance(m, PlanarScan) for m in net.modules())
    torch.testing.assert_close(outs[2], outs[4])
    torch.testing.assert_close(outs[1], outs[4])
    scan = next(m for m in net.modules() if isinstance(m, PlanarScan))
    feat = torch.rand(1, 8, 6, 6)
    with runtime.use(inference_scan_directions=1):
        with torch.no_grad():
            assert scan.direction_groups(feat) == [range(0, 1), range(1, 2), range(2, 3), range(3, 4)]
        assert scan.direction_groups(feat) == [range(4)]  # gradients enabled
        monkeypatch.setattr(ops, "takes_fused_path", lambda *a: True)
        with torch.no_grad():
            assert scan.direction_groups(feat) == [range(4)]  # the fused op takes all four at once
    with pytest.raises(ValueError, match="inference_scan_directions must be 1, 2, 4 or 'auto', got 3"):
        runtime.set_inference_scan_directions(3)
    assert runtime.get().inference_scan_directions == "auto"
    assert runtime.inference_scan_directions("cpu") == 1 and runtime.inference_scan_directions("cuda") == 4
