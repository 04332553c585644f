"""The compile policy (vmambair.engine.compiling): new sizes do not recompile, validation runs eagerly.

Compiles with dynamo's CompileCounter backend (no code generation), so the tests count the graphs
torch.compile would build, on the CPU, in a few seconds; no timing."""
import pytest
import torch
from torch import nn

from vmambair.engine import compiling

dynamo_testing = pytest.importorskip("torch._dynamo.testing")


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return x + torch.relu(self.conv(x)) * x.mean(dim=(2, 3), keepdim=True)


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


SIZES = [(16, 16), (24, 40), (32, 8), (40, 24)]


def test_without_policy_each_new_size_compiles_again():
    """The control: plain compile_blocks builds more than one graph for these sizes."""
    counter = dynamo_testing.CompileCounter()
    net = TinyNet()
    net.compile_blocks(backend=counter)
    run_sizes(net, SIZES)
    assert counter.frame_count >= 2


def test_inference_policy_builds_one_graph_for_all_sizes():
    counter = dynamo_testing.CompileCounter()
    net = compiling.compile_network(TinyNet(), training=False, backend=counter)
    assert compiling.compiled_modules(net) == ["stage.0", "stage.1"]
    run_sizes(net, SIZES)
    assert counter.frame_count == 1


def test_training_policy_also_lets_the_batch_change():
    counter = dynamo_testing.CompileCounter()
    net = compiling.compile_network(TinyNet(), training=True, backend=counter)
    for batch, size in [(8, 16), (5, 20), (3, 24), (2, 32)]:  # progressive stages
        out = net(torch.rand(batch, 3, size, size))
        out.mean().backward()
    assert counter.frame_count == 1


def test_marks_are_applied_to_the_inputs_of_compiled_blocks():
    net = compiling.compile_network(TinyNet(), training=False, backend=dynamo_testing.CompileCounter())
    seen = []
    net.stage[0].register_forward_pre_hook(lambda m, args: seen.append(args[0]))  # runs after the parent's hook
    with compiling.validation_stance(net):  # eager: the hook sees the real tensor
        net(torch.rand(1, 3, 8, 8))
    marked = getattr(seen[0], "_dynamo_weak_dynamic_indices", None) or getattr(seen[0], "_dynamo_dynamic_indices", None)
    assert marked is not None and set(marked) == {2, 3}


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


def test_vmambair_blocks_get_the_hooks_on_their_stages():
    from vmambair.archs.vmambair_arch import VmambaIR

    net = VmambaIR(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1)
    compiling.compile_network(net, training=True, backend=dynamo_testing.CompileCounter())
    names = compiling.compiled_modules(net)
    assert names and all(type(dict(net.named_modules())[n]).__name__ == "OSSBlock" for n in names)
    hooked = [n for n, m in net.named_modules() if getattr(m, compiling._HOOK_ATTR, None) is not None]
    assert sorted(hooked) == sorted({n.rpartition(".")[0] for n in names})
