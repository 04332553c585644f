"""CUDA graphs (vmambair.engine.cuda_graph): a replayed graph computes what the eager network does.

GPU tests are marked ``cuda``; they compare against the same network run eagerly in the same
process (fp32, so the only differences are the order of float additions of atomics).
"""
import pytest
import torch
import torch.nn.functional as F

import vmambair  # noqa: F401
from vmambair import ops
from vmambair.archs import VmambaIR
from vmambair.engine.cuda_graph import GraphedForward, GraphedLossAndGrad, eager_loss_and_grad


def small_net(**kw):
    torch.manual_seed(0)
    net = VmambaIR(dim=16, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, **kw)
    torch.nn.init.normal_(net.tail.weight if net.scale == 1 else net.tail[-1].weight, std=0.05)
    return net


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def test_graphed_forward_refuses_cpu_input():
    with pytest.raises(ValueError, match="needs a CUDA input"):
        GraphedForward(small_net())(torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="max_graphs"):
        GraphedForward(small_net(), max_graphs=0)


def test_eager_loss_and_grad_writes_fresh_gradients():
    """The eager step (also what a graph records) leaves this batch's gradient, not a sum over calls."""
    net = small_net(scale=2)
    x, y = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 32, 32)
    step = eager_loss_and_grad(lambda a, b: F.l1_loss(net(a), b), net.parameters())
    step(torch.rand(1, 3, 16, 16), y)  # a different batch first: its gradient must not stay
    loss = step(x, y)
    got = [p.grad.clone() for p in net.parameters()]
    net.zero_grad(set_to_none=True)
    F.l1_loss(net(x), y).backward()
    assert loss.item() == F.l1_loss(net(x), y).item()
    for g, p in zip(got, net.parameters()):
        torch.testing.assert_close(g, p.grad)


@pytest.mark.cuda
@pytest.mark.parametrize("fused", [True, False])
def test_graphed_forward_matches_eager_for_new_inputs_and_shapes(fused):
    net = small_net().cuda().eval()
    graphed = GraphedForward(net, max_graphs=1)
    with ops.fused_omni_scan(fused):
        for shape in [(1, 3, 32, 40), (2, 3, 24, 24), (1, 3, 32, 40)]:
            for _ in range(2):  # a fresh input of a recorded shape: the replay must read it
                x = torch.rand(shape, device="cuda")
                y = graphed(x)
                with torch.no_grad():
                    ref = net(x)
                    # eager run-to-run difference (the fused op adds with atomics, in a different
                    # order each run); a replay of stale input would be off by O(1)
                    floor = max(rel(net(x), ref) for _ in range(3))
                assert y.shape == ref.shape
                assert rel(y, ref) <= 10 * floor + 1e-4, (rel(y, ref), floor)
        assert graphed.shapes == [(1, 3, 32, 40)]  # max_graphs=1 keeps the last shape only
        with torch.autocast("cuda", dtype=torch.bfloat16):  # autocast is part of the key: a new graph
            yb = graphed(x)
        assert graphed.shapes == [(1, 3, 32, 40)] and 0 < rel(yb, ref) < 3e-2


@pytest.mark.cuda
@pytest.mark.parametrize("fused,flat", [(True, False), (False, False), (True, True)])
def test_graphed_loss_and_grad_trains_like_eager(fused, flat):
    """SGD steps on replayed forward/backward give the losses and weights of eager steps, across
    batch-shape changes (new recording, and switching back to a kept graph's gradients); with
    flat_grads, every gradient is a view of the one flat buffer."""
    nets = [small_net(scale=2).cuda().train() for _ in range(3)]  # eager, eager again (noise floor), graphed
    opts = [torch.optim.SGD(n.parameters(), lr=0.05) for n in nets]
    gen = torch.Generator(device="cuda").manual_seed(1)
    shapes = [(2, 16, 16)] * 3 + [(1, 24, 16)] * 2 + [(2, 16, 16)] * 2
    batches = [(torch.rand(b, 3, h, w, device="cuda", generator=gen),
                torch.rand(b, 3, 2 * h, 2 * w, device="cuda", generator=gen)) for b, h, w in shapes]
    graphed = GraphedLossAndGrad(lambda x, y: F.l1_loss(nets[2](x), y), nets[2].parameters(), max_graphs=2,
                                 flat_grads=flat)
    losses = [[], [], []]
    with ops.fused_omni_scan(fused):
        for x, y in batches:
            for k in range(2):
                opts[k].zero_grad(set_to_none=True)
                loss = F.l1_loss(nets[k](x), y)
                loss.backward()
                opts[k].step()
                losses[k].append(loss.item())
            losses[2].append(graphed(x, y).item())
            if flat:
                base = graphed.flat_grad.data_ptr()
                end = base + graphed.flat_grad.numel() * 4
                assert all(base <= p.grad.data_ptr() < end for p in nets[2].parameters() if p.grad is not None)
            opts[2].step()
    floor = max(abs(a - b) for a, b in zip(losses[0], losses[1]))
    assert max(abs(a - b) for a, b in zip(losses[0], losses[2])) <= 10 * floor + 1e-6
    # Weights: each within 10x the largest eager run-to-run weight difference. (A per-weight floor
    # was flaky: one eager pair can leave a weight almost untouched by the atomics' order; a run
    # failed at 5.1e-5 against that weight's 4.6e-6.) A replay with a stale input or a gradient
    # missing from the flat buffer is off by about lr * grad, orders of magnitude more.
    pairs = list(zip(*(n.parameters() for n in nets)))
    weight_floor = max((b - a).abs().max() for a, b, _ in pairs)
    for a, b, c in pairs:
        assert (c - a).abs().max() <= 10 * weight_floor + 1e-6


def test_failed_recording_in_training_names_the_option(tmp_path):
    """A network that a CUDA graph cannot hold stops training with an options error naming
    train.cuda_graph and how to turn it off (simulated: recording needs a GPU)."""
    from basicsr.utils.registry import MODEL_REGISTRY

    from tests.helpers import tiny_options
    from vmambair.engine.cuda_graph import GraphRecordingError
    from vmambair.engine.dist import DistContext
    from vmambair.config import OptionsError, load_options

    opt = load_options(tiny_options(tmp_path), ["train.cuda_graph=true"])
    model = MODEL_REGISTRY.get(opt.model_type)(opt, DistContext())
    assert model.graphed_step is None  # on the CPU the option does nothing

    def refuse(*batch):
        raise GraphRecordingError("recording a CUDA graph failed (RuntimeError: operation not permitted).")
    model.graphed_step = refuse
    model.feed_data({"lq": torch.rand(1, 3, 16, 16), "gt": torch.rand(1, 3, 16, 16)})
    with pytest.raises(OptionsError, match=r"'train.cuda_graph'.*operation not permitted.*train.cuda_graph: false"):
        model.optimize_parameters(1)
