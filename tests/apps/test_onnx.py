"""ONNX export: one file, dynamic batch/height/width, standard operators only (stock onnxruntime on
the CPU runs it with no custom op), equal to PyTorch within 1e-3 on [0, 1] images at two sizes; for
the quick-start network and a full-size configuration (the real-world x4 network)."""
import numpy as np
import pytest
import torch
import yaml

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import vmambair  # noqa: E402,F401
from vmambair.apps.export import export_main, export_onnx  # noqa: E402
from vmambair.archs import VmambaIR  # noqa: E402
from vmambair.engine.portable import save_weights, weights_metadata  # noqa: E402

from tests.helpers import ROOT, TINY_NET, one_thread  # noqa: F401,E402

pytestmark = pytest.mark.usefixtures("one_thread")

# The operators of the ONNX standard (default domain) that the export may use; anything else
# (a custom domain, or an op onnxruntime would need a plugin for) fails the test.
STANDARD_DOMAINS = {"", "ai.onnx"}


def network_g_of(options_file: str) -> dict:
    return yaml.safe_load((ROOT / "options" / options_file).read_text())["network_g"]


def random_weights(tmp_path, network_g: dict, seed: int = 0):
    """Freshly initialised weights, without identity_init (whose zero tail would hide every error)."""
    torch.manual_seed(seed)
    spec = {k: v for k, v in network_g.items() if k not in ("type", "identity_init", "activation_checkpointing")}
    net = VmambaIR(**spec)
    path = save_weights(net.state_dict(), tmp_path / "net.safetensors",
                        weights_metadata(network_g, scale=network_g.get("scale", 1), task="test", source="test"))
    return path, net.eval()


def check_against_pytorch(onnx_path, net, sizes, batch=1):
    """Max abs difference ORT vs PyTorch on [0, 1] images of ``sizes``, asserting output shapes."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    scale = net.scale
    worst = 0.0
    g = torch.Generator().manual_seed(1)
    for h, w in sizes:
        x = torch.rand(batch, 3, h, w, generator=g)
        got = session.run(None, {"input": x.numpy()})[0]
        with torch.no_grad():
            want = net(x).numpy()
        assert got.shape == (batch, 3, h * scale, w * scale)
        # a network that does something, at the scale of an image (so 1e-3 means something)
        assert 0.05 < np.abs(want - torch.nn.functional.interpolate(x, scale_factor=scale).numpy()).mean() < 2
        worst = max(worst, float(np.abs(got - want).max()))
    return worst


def assert_standard_ops(onnx_path):
    model = onnx.load(str(onnx_path))
    onnx.checker.check_model(model)
    domains = {n.domain for n in model.graph.node}
    assert domains <= STANDARD_DOMAINS, f"non-standard operator domains {domains - STANDARD_DOMAINS}"
    ops = {n.op_type for n in model.graph.node}
    assert "Loop" in ops and "Conv" in ops  # the scan's chunk loop, the network's convolutions
    dims = [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims[0] and dims[2] and dims[3], f"batch, height and width must be dynamic, got {dims}"


def test_quickstart_network(tmp_path, capsys):
    weights, net = random_weights(tmp_path, network_g_of("quickstart.yml"))
    out = tmp_path / "quickstart.onnx"
    # the command line (its own onnxruntime check is what this test does, on more sizes)
    assert export_main([str(weights), "--onnx", str(out), "--opset", "17", "--no-check"]) == 0
    assert "Wrote" in capsys.readouterr().out
    assert_standard_ops(out)
    # sizes unlike the 64x64 the graph was traced with, odd and not multiples of 8, a batch of two
    assert check_against_pytorch(out, net, [(37, 52), (8, 8), (90, 33)]) <= 1e-3
    assert check_against_pytorch(out, net, [(20, 28)], batch=2) <= 1e-3


def test_full_size_realsr_x4_network(tmp_path):
    network_g = network_g_of("realsr_x4_gan.yml")
    assert network_g["dim"] == 48 and network_g["scale"] == 4
    weights, net = random_weights(tmp_path, network_g, seed=1)
    report = export_onnx(weights, tmp_path / "realsr.onnx", check=False)
    assert report["scale"] == 4
    assert_standard_ops(report["path"])
    assert check_against_pytorch(report["path"], net, [(24, 40), (33, 17)]) <= 1e-3


def test_fp16_and_bad_opset(tmp_path, capsys):
    # one OSS block (the latent level): fp16 is plumbing, not depth
    weights, net = random_weights(tmp_path, dict(TINY_NET, num_blocks=[0, 0, 0, 1], num_refinement_blocks=0))
    out = tmp_path / "tiny16.onnx"
    assert export_main([str(weights), "--onnx", str(out), "--fp16"]) == 0
    model = onnx.load(str(out))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.rand(1, 3, 30, 44)
    got = session.run(None, {"input": x.half().numpy()})[0]
    with torch.no_grad():
        want = net(x).numpy()
    assert got.dtype == np.float16 and np.abs(got.astype(np.float32) - want).max() < 2e-2
    assert export_main([str(weights), "--onnx", str(tmp_path / "x.onnx"), "--opset", "12"]) == 2
    assert "opset" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("L,G", [(1, 1), (15, 1), (16, 2), (17, 1), (300, 2), (5000, 1)])
def test_export_scan_backend_matches_reference(L, G):
    """The export backend's chunked scan (any length, padding, three chunk levels, closed form)
    against the step-by-step reference, in float64."""
    from vmambair import ops
    from vmambair.ops.scan_reference import scan_reference

    g = torch.Generator().manual_seed(L)
    b, d, N = 2, 4, 3
    u, delta = torch.randn(2, b, d, L, generator=g, dtype=torch.float64)
    A = -torch.rand(d, N, generator=g, dtype=torch.float64) * 4
    B, C = torch.randn(2, b, G, N, L, generator=g, dtype=torch.float64)
    D, bias = torch.randn(2, d, generator=g, dtype=torch.float64)
    want = scan_reference(u, delta, A, B, C, D, bias, True)
    got = ops.selective_scan(u, delta, A, B, C, D, bias, True, backend="export")
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_export_scan_long_sequence_float32():
    """65537 steps (every level and the closed form in use) with slow and fast decays: float32
    stays within 1e-4 of float64 (no cancellation of long cumulative sums)."""
    from vmambair import ops

    g = torch.Generator().manual_seed(0)
    b, d, N, L = 1, 2, 4, 65537
    u = torch.randn(b, d, L, generator=g)
    delta = torch.randn(b, d, L, generator=g) - 3          # softplus -> small steps: long memory
    A = -torch.tensor([[0.01, 0.1, 1.0, 16.0], [0.05, 0.5, 2.0, 8.0]])
    B, C = torch.randn(2, b, 1, N, L, generator=g)
    want = ops.selective_scan(*(t.double() for t in (u, delta, A, B, C)), delta_softplus=True, backend="torch")
    got = ops.selective_scan(u, delta, A, B, C, delta_softplus=True, backend="export")
    assert (got.double() - want).abs().max() <= 1e-4 * want.abs().max()


@pytest.mark.parametrize("levels", [0, 1, 3])
def test_entering_states_do_not_cancel_digits(levels):
    """A strong decay followed by weak ones: cumulative sums reach -1e4 while the exponents that
    matter are -0.01 apart. Summed as differences of cumulative sums they would lose three digits."""
    from vmambair.ops.scan_export import entering_states

    n = 40
    log_a = torch.full((2, n), -0.01)
    log_a[:, 0] = -1e4
    log_a[1, 20] = -5e3
    x = torch.ones(2, n)
    want, h = torch.zeros(2, n, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    for i in range(n):
        want[:, i] = h
        h = torch.exp(log_a[:, i].double()) * h + x[:, i].double()
    got = entering_states(log_a, x, levels)
    assert (got.double() - want).abs().max() <= 1e-5 * want.abs().max()
