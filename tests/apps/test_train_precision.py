"""train.precision on the GPU: fp16 with its gradient scaler, in the CUDA-graph step (also with
accumulation, an overflow the scaler handles and a NaN the guard skips) and in the GAN step; and
the one-line refusal of bf16 on a card without it (checked on the CPU by faking the card)."""
import pytest
import torch

import vmambair  # noqa: F401
from basicsr.utils.registry import MODEL_REGISTRY
from vmambair.apps.train import train_main
from vmambair.config import OptionsError, load_options
from vmambair.engine.dist import DistContext
from vmambair.models.base_model import check_precision_supported

from tests.apps.test_train import _records
from tests.helpers import one_thread, tiny_options  # noqa: F401


def test_bf16_on_a_card_without_bf16_is_a_one_line_error_suggesting_fp16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100-SXM2-16GB")
    with pytest.raises(OptionsError) as err:
        check_precision_supported("bf16", torch.device("cuda", 0))
    text = str(err.value)
    assert "\n" not in text and "Tesla V100-SXM2-16GB has no bf16" in text and "train.precision=fp16" in text
    check_precision_supported("fp16", torch.device("cuda", 0))  # fp16 and fp32 are fine there
    check_precision_supported("bf16", torch.device("cpu"))      # the CPU runs fp32 anyway


def _gpu_model(tmp_path, *overrides):
    opt = load_options(tiny_options(tmp_path), ["num_gpu=1", "train.deterministic=false", "train.ema_decay=0",
                                                *overrides])
    torch.manual_seed(0)
    return MODEL_REGISTRY.get(opt.model_type)(opt, DistContext(device=torch.device("cuda", 0)))


@pytest.mark.cuda
def test_fp16_graphed_accumulation_matches_eager(tmp_path):
    """fp16 + CUDA graph + 2 micro-batches per step against the same in eager mode, 6 iterations
    through a progressive stage change: the loss curves agree within fp16 noise."""
    common = ["--set", "num_gpu=1", "--set", "val=null", "--set", "train.deterministic=false",
              "--set", "train.precision=fp16", "--set", "train.accumulate=2", "--set", "train.total_iter=6"]
    curves = {}
    for name, graph in (("graphed", "true"), ("eager", "false")):
        root = tmp_path / name
        root.mkdir()
        assert train_main(["-opt", str(tiny_options(root)), *common, "--set", f"train.cuda_graph={graph}"]) == 0
        curves[name] = [r["l_pix"] for r in _records(root / "experiments" / "tiny") if "l_pix" in r]
    assert len(curves["graphed"]) == 6
    assert curves["graphed"] == pytest.approx(curves["eager"], rel=2e-2)


@pytest.mark.cuda
def test_graphed_fp16_overflow_and_nan_are_skipped_without_corrupting_the_graph(tmp_path):
    graphed = _gpu_model(tmp_path / "g", "train.precision=fp16", "train.cuda_graph=true")
    eager = _gpu_model(tmp_path / "e", "train.precision=fp16", "train.cuda_graph=false")
    assert graphed.graphed_step is not None and graphed.scaler is not None
    torch.manual_seed(1)
    batch = {"lq": torch.rand(2, 3, 16, 16), "gt": torch.rand(2, 3, 16, 16)}
    nan_batch = {"lq": batch["lq"].clone().fill_(float("nan")), "gt": batch["gt"]}
    events = []
    for model in (graphed, eager):
        record = []
        model.scaler.scale(torch.ones((), device="cuda"))  # the scaler makes its scale tensor on first use
        for it, (data, scale) in enumerate([(batch, 2.0 ** 10), (batch, 2.0 ** 60), (batch, 2.0 ** 10),
                                            (nan_batch, None), (batch, None)], 1):
            if scale is not None:
                model.scaler.update(new_scale=scale)
            before = [p.detach().clone() for p in model.networks["net_g"].parameters()]
            model.feed_data(data)
            loss = model.optimize_parameters(it)["l_pix"].item()
            unchanged = all(torch.equal(a, p) for a, p in zip(before, model.networks["net_g"].parameters()))
            record.append((model.step_skipped, model.fp16_overflow, unchanged, loss))
        events.append(record)
    for record in events:
        flags = [r[:3] for r in record]
        # good step; overflow (scaler's business); good; NaN input (guard); good again
        assert flags == [(False, False, False), (True, True, True), (False, False, False), (True, False, True),
                         (False, False, False)]
    g_losses = [r[3] for r in events[0] if r[3] == r[3]]
    e_losses = [r[3] for r in events[1] if r[3] == r[3]]
    assert g_losses == pytest.approx(e_losses, rel=2e-2)
    for a, b in zip(graphed.networks["net_g"].parameters(), eager.networks["net_g"].parameters()):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=5e-2, atol=5e-4)


@pytest.mark.cuda
def test_gan_step_in_fp16_uses_the_scaler_for_g_only(tmp_path):
    from tests.models.test_sr import _paired_gan_options
    opt = load_options(_paired_gan_options(tmp_path), ["num_gpu=1", "train.bf16=null", "train.precision=fp16",
                                                       "train.accumulate=2"])
    model = MODEL_REGISTRY.get(opt.model_type)(opt, DistContext(device=torch.device("cuda", 0)))
    assert model.scaler is not None
    batches = [{"lq": torch.rand(2, 3, 8, 8), "gt": torch.rand(2, 3, 32, 32)} for _ in range(2)]
    for it in range(1, 4):
        losses = model.optimize_parameters(it, batches)
        assert all(torch.isfinite(v) for v in losses.values()) and not model.step_skipped
    assert {"l_g_pix", "l_g_gan", "l_d_real", "l_d_fake"} <= set(losses)
    assert model.scaler.get_scale() > 0 and "grad_scaler" in model.state_dict()


class StandInGraph:
    """A CPU stand-in for GraphedLossAndGrad with its contract: ``(*batch) -> loss``, the
    gradient of ``loss * loss_multiplier`` rewritten (not added) into the same buffers on every
    call, and with ``flat_grads`` every ``p.grad`` a view of one flat buffer."""

    def __init__(self, loss_fn, params, flat_grads, loss_multiplier):
        from vmambair.engine.cuda_graph import eager_loss_and_grad
        self.params = [p for p in params if p.requires_grad]
        self.step = eager_loss_and_grad(loss_fn, self.params, loss_multiplier)
        self.flat_grad = torch.zeros(sum(p.numel() for p in self.params)) if flat_grads else None
        self.views = ([v.view_as(p) for v, p in zip(self.flat_grad.split([p.numel() for p in self.params]),
                                                     self.params)] if flat_grads else None)

    def __call__(self, *batch):
        loss = self.step(*batch)
        if self.views is not None:
            for v, p in zip(self.views, self.params):
                v.copy_(p.grad)
                p.grad = v
        return loss


@pytest.mark.parametrize("flat", [True, False])
def test_graphed_accumulation_bookkeeping_matches_eager(tmp_path, one_thread, flat):  # noqa: F811
    """The graphed step's accumulation (gradients summed outside the graph, the 1/K multiplier
    read from a buffer) gives the eager step's weights; the graph itself is replaced by a CPU
    stand-in with the same contract (the recording is covered by the cuda tests)."""
    over = ["train.accumulate=3", "train.optim_g={type: SGD, lr: 0.5}", "train.clip_grad_norm=null",
            "train.ema_decay=0"]
    models = []
    for graphed in (False, True):
        opt = load_options(tiny_options(tmp_path), over)
        torch.manual_seed(0)
        model = MODEL_REGISTRY.get(opt.model_type)(opt, DistContext())
        if graphed:
            net = model.networks["net_g"]
            model.graphed_step = StandInGraph(lambda lq, gt, net=net, m=model: m.pixel_loss_of(net, lq, gt),
                                              net.parameters(), flat, model.graph_multiplier)
        models.append(model)
    torch.manual_seed(3)
    steps = [[{"lq": torch.rand(2, 3, 16, 16), "gt": torch.rand(2, 3, 16, 16)} for _ in range(3)] for _ in range(2)]
    for model in models:
        for it, micro in enumerate(steps, 1):
            model.optimize_parameters(it, micro)
    eager, graphed = (m.networks["net_g"].state_dict() for m in models)
    assert models[1].graph_multiplier.item() == pytest.approx(1 / 3)
    for name in eager:
        torch.testing.assert_close(graphed[name], eager[name], rtol=1e-5, atol=1e-7)
