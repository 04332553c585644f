"""The compile policy (vmambair.engine.compiling): new sizes do not recompile, validation runs eagerly.

Compiles with dynamo's CompileCounter backend (no code generation), so the tests count the graphs
torch.compile would build, on the CPU, in a few seconds; no timing."""
import pytest
import torch
from torch import nn

from vmambair.engine import compiling

dynamo_testing = pytest.importorskip("torch._dynamo.testing")


class Block(nn.Module):
    """Breaks its graph in the middle with the image size in plain integers, as VmambaIR's blocks do
    around a scan backend dynamo cannot trace: the code after the break is a frame of its own."""

    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        b, c, H, W = x.shape
        y = torch.relu(self.conv(x)).reshape(b, c, H * W)
        torch._dynamo.graph_break()
        y = y.reshape(b, c, H, W)
        return x + y * x.mean(dim=(2, 3), keepdim=True)


class TinyNet(nn.Module):
    """Two compiled blocks inside an eager nn.Sequential, like VmambaIR's stages."""

    def __init__(self, c=4):
        super().__init__()
        self.head = nn.Conv2d(3, c, 3, padding=1)
        self.stage = nn.Sequential(Block(c), Block(c))

    def compile_blocks(self, **kwargs):
        for m in self.stage:
            m.compile(**kwargs)

    def forward(self, x):
        return self.stage(self.head(x))


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def run_sizes(net, sizes, batch=1):
    with torch.no_grad():
        for h, w in sizes:
            net(torch.rand(batch, 3, h, w))


SIZES = [(24, 40), (16, 16), (32, 8), (40, 24)]  # the first is not square (see the next tests)


def frames_first_and_all(net, counter, sizes):
    """Graphs compiled after the first size, and after all of them."""
    run_sizes(net, sizes[:1])
    first = counter.frame_count
    run_sizes(net, sizes[1:])
    return first, counter.frame_count


def test_without_policy_new_sizes_compile_again():
    """The control: plain compile_blocks compiles again for new sizes."""
    counter = dynamo_testing.CompileCounter()
    net = TinyNet()
    net.compile_blocks(backend=counter)
    first, total = frames_first_and_all(net, counter, SIZES)
    assert total > first


def test_inference_policy_builds_one_graph_for_all_sizes():
    counter = dynamo_testing.CompileCounter()
    net = compiling.compile_network(TinyNet(), backend=counter)
    assert compiling.compiled_modules(net) == ["stage.0", "stage.1"]
    first, total = frames_first_and_all(net, counter, SIZES)
    assert total == first


def test_training_policy_also_lets_the_batch_change():
    counter = dynamo_testing.CompileCounter()
    net = compiling.compile_network(TinyNet(), backend=counter)
    counts = []
    for batch, size in [(8, 16), (5, 20), (3, 24), (2, 32)]:  # progressive stages
        net(torch.rand(batch, 3, size, size)).mean().backward()
        counts.append(counter.frame_count)
    assert counts[0] > 0 and counts[-1] == counts[0]


def test_inference_policy_compiles_dynamic():
    """The policy's compile is dynamic=True: a first square input still serves other sizes once a
    non-square one has compiled (H == W is the only tie torch makes)."""
    counter = dynamo_testing.CompileCounter()
    net = compiling.compile_network(TinyNet(), backend=counter)
    run_sizes(net, [(24, 24), (16, 40)])
    after_two = counter.frame_count
    run_sizes(net, [(32, 8), (48, 24), (8, 56)])
    assert counter.frame_count == after_two


def test_validation_stance_runs_compiled_blocks_eagerly():
    counter = dynamo_testing.CompileCounter()
    net = TinyNet()
    net.compile_blocks(backend=counter)
    x = torch.rand(1, 3, 12, 20)
    with compiling.validation_stance(net), torch.no_grad():
        out = net(x)
        run_sizes(net, SIZES)
    assert counter.frame_count == 0
    net_eager = TinyNet()
    net_eager.load_state_dict(net.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(out, net_eager(x))


def test_validation_stance_on_an_uncompiled_network_is_a_no_op():
    net = TinyNet()
    assert not compiling.is_compiled(net)
    with compiling.validation_stance(net), torch.no_grad():
        net(torch.rand(1, 3, 8, 8))


def test_vmambair_compiles_its_blocks():
    from vmambair.archs.vmambair_arch import VmambaIR

    net = VmambaIR(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1)
    compiling.compile_network(net, backend=dynamo_testing.CompileCounter())
    names = compiling.compiled_modules(net)
    assert names and all(type(dict(net.named_modules())[n]).__name__ == "OSSBlock" for n in names)


def test_compile_ahead_spares_the_switch_to_a_batch_of_one_and_leaves_no_trace():
    """The trainer's compile_ahead: after it, the first training step at a batch of 1 compiles
    nothing; weights, gradients and random generators are as before it. The control shows that a
    batch of 1 does compile again without it (torch specialises sizes of 1)."""
    def train_steps(net, counter, ahead: bool):
        net(torch.rand(4, 3, 16, 16)).mean().backward()
        if ahead:
            compiling.compile_ahead(net, (1, 3, 24, 24), torch.enable_grad)
        before = counter.frame_count
        net(torch.rand(1, 3, 24, 24)).mean().backward()
        return counter.frame_count - before

    counter = dynamo_testing.CompileCounter()
    assert train_steps(compiling.compile_network(TinyNet(), backend=counter), counter, ahead=False) > 0

    torch._dynamo.reset()
    counter = dynamo_testing.CompileCounter()
    net = compiling.compile_network(TinyNet(), backend=counter)
    net(torch.rand(4, 3, 16, 16)).mean().backward()
    weights = {k: v.clone() for k, v in net.state_dict().items()}
    grads = {k: p.grad.clone() for k, p in net.named_parameters()}
    rng = torch.get_rng_state()
    before = counter.frame_count
    compiling.compile_ahead(net, (1, 3, 24, 24), torch.enable_grad)
    assert counter.frame_count > before  # it did compile
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in net.parameters())
    for k, v in net.state_dict().items():
        assert torch.equal(v, weights[k])
    assert grads  # (the step before had gradients; compile_ahead dropped them)
    before = counter.frame_count
    net(torch.rand(1, 3, 24, 24)).mean().backward()
    assert counter.frame_count == before
