"""Super-resolution recipes on CPU with tiny networks: the four option files (values of the
paper / Real-ESRGAN), one iteration of each stage from those files, stage 2 starting from stage
1's EMA weights, G/D alternation, EMA, the Real-ESRGAN degradation (seeded determinism, LQ size
and range, parameters), the training-pair pool, the metrics (LPIPS, NIQE), offline backbones,
and the test.py tables of both SR benchmarks."""
import math
import random
import urllib.error
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

import vmambair  # noqa: F401
from vmambair.data.degradation import (RealESRGANDegradation, TrainingPairPool, degrade_batch,
                                       parse_degradation, sample_kernels)
from vmambair.data.realesrgan_dataset import RealESRGANGTDataset
from vmambair.engine.checkpoint import load_network_weights
from vmambair.engine.dist import DistContext
from vmambair.config import OptionsError, load_options
from vmambair.apps.test import run_benchmark
from vmambair.apps.train import train_main

from tests.helpers import ROOT, TINY_NET, one_thread, set_nested  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_SR_NET = dict(TINY_NET, scale=4)
TINY_D = {"type": "UNetDiscriminatorSN", "num_in_ch": 3, "num_feat": 4, "skip_connection": True}
KERNELS = ["iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso"]
KERNEL_PROB = [0.45, 0.25, 0.12, 0.03, 0.12, 0.03]

# Real-ESRGAN's x4plus degradation parameters (train_realesrnet_x4plus.yml / train_realesrgan_x4plus.yml).
REAL_ESRGAN = {
    "blur_kernel_size": 21, "kernel_list": KERNELS, "kernel_prob": KERNEL_PROB, "sinc_prob": 0.1,
    "blur_sigma": [0.2, 3], "betag_range": [0.5, 4], "betap_range": [1, 2],
    "blur_kernel_size2": 21, "kernel_list2": KERNELS, "kernel_prob2": KERNEL_PROB, "sinc_prob2": 0.1,
    "blur_sigma2": [0.2, 1.5], "betag_range2": [0.5, 4], "betap_range2": [1, 2], "final_sinc_prob": 0.8,
    "crop_pad_size": 400,
    "resize_prob": [0.2, 0.7, 0.1], "resize_range": [0.15, 1.5], "gaussian_noise_prob": 0.5,
    "noise_range": [1, 30], "poisson_scale_range": [0.05, 3], "gray_noise_prob": 0.4, "jpeg_range": [30, 95],
    "second_blur_prob": 0.8, "resize_prob2": [0.3, 0.4, 0.3], "resize_range2": [0.3, 1.2],
    "gaussian_noise_prob2": 0.5, "noise_range2": [1, 25], "poisson_scale_range2": [0.05, 2.5],
    "gray_noise_prob2": 0.4, "jpeg_range2": [30, 95],
    "queue_size": 180, "gt_usm": True, "l1_gt_usm": True, "percep_gt_usm": True, "gan_gt_usm": False,
}


# ----------------------------------------------------------------------------- data helpers
def _photo(h, w, seed):
    """A smooth colour image with edges (uint8 BGR)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([128 + 90 * np.sin(xx / (4 + c + seed % 3)) * np.cos(yy / (5 + c)) for c in range(3)], -1)
    img[h // 3: h // 2, w // 4: w // 2] += 60
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


def _write_sr_pairs(hr_dir: Path, lr_dir: Path, n: int, lr_size=(12, 10), seed=0):
    hr_dir.mkdir(parents=True, exist_ok=True)
    lr_dir.mkdir(parents=True, exist_ok=True)
    h, w = lr_size
    for i in range(n):
        hr = _photo(4 * h, 4 * w, seed + i)
        cv2.imwrite(str(hr_dir / f"im{i}.png"), hr)
        cv2.imwrite(str(lr_dir / f"im{i}.png"), cv2.resize(hr, (w, h), interpolation=cv2.INTER_AREA))


def _tiny_recipe(src: str, tmp: Path, name: str, **changes) -> Path:
    """Options file ``src`` from options/ with only sizes changed (tiny net, tiny data, CPU)."""
    raw = yaml.safe_load((ROOT / "options" / src).read_text())
    raw["name"] = name
    raw["num_gpu"] = 0
    raw["network_g"] = dict(TINY_SR_NET)
    if "network_d" in raw:
        raw["network_d"]["num_feat"] = 4
    raw["path"].update(root=str(tmp), data_root=str(tmp / "Datasets"))
    tr = raw["datasets"]["train"]
    tr.update(gt_size=32, batch_size_per_gpu=2, num_worker_per_gpu=0, meta_info_file=None)
    if "degradation" in tr:
        tr["degradation"].update(crop_pad_size=72, queue_size=4)
    if raw["train"].get("perceptual_opt"):
        raw["train"]["perceptual_opt"]["pretrained"] = False  # random VGG19: no weight file needed
    raw["train"].update(total_iter=1, precision="fp32")
    raw["logger"].update(print_freq=1, use_tb_logger=False)
    raw["val"]["metrics"]["lpips"] = {"type": "calculate_lpips", "crop_border": 4, "pretrained": False}
    for key, value in changes.items():
        set_nested(raw, key.split("."), value)
    path = tmp / f"{name}.yml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _val_section(tmp: Path):
    _write_sr_pairs(tmp / "Datasets" / "val" / "HR", tmp / "Datasets" / "val" / "LR", 1, seed=50)
    return {"name": "Val", "type": "PairedImageFolderDataset", "dataroot_gt": "val/HR", "dataroot_lq": "val/LR"}


# ----------------------------------------------------------------------------- option files
def _load_recipe(tmp, src):
    data = tmp / "Datasets"
    raw = yaml.safe_load((ROOT / "options" / src).read_text())
    tr = raw["datasets"]["train"]
    for k in ("dataroot_gt", "dataroot_lq"):
        if tr.get(k):
            (data / tr[k]).mkdir(parents=True, exist_ok=True)
    (data / tr["meta_info_file"]).parent.mkdir(parents=True, exist_ok=True)
    (data / tr["meta_info_file"]).write_text("")
    return load_options(ROOT / "options" / src, [f"path.data_root={data}", f"path.root={tmp}"])


def test_bicubic_option_files_hold_the_paper_recipe(tmp_path):
    psnr, gan = _load_recipe(tmp_path, "sr_x4_psnr.yml"), _load_recipe(tmp_path, "sr_x4_gan.yml")
    for o in (psnr, gan):
        assert o.scale == 4 and o.datasets["train"].gt_size == 256          # LQ 64 / GT 256
        assert o.datasets["train"].batch_size_per_gpu * 8 == 64              # 64 in total on 8 GPUs
        assert o.train.optim_g["type"] == "Adam" and o.train.optim_g["betas"] == [0.9, 0.99]
        assert o.train.optim_g["lr"] == 2e-4 and o.train.scheduler["type"] == "MultiStepLR"
        assert o.train.scheduler["gamma"] == 0.5 and o.train.ema_decay == 0.999
        assert o.network_g["num_blocks"] == [14, 1, 1, 1] and o.network_g["num_refinement_blocks"] == 14
    assert psnr.model_type == "ImageRestorationModel" and psnr.train.gan_opt is None
    assert psnr.train.perceptual_opt is None
    t = gan.train
    assert gan.model_type == "SRGANRestorationModel" and t.total_iter == 300_000
    assert t.optim_d["type"] == "Adam" and t.optim_d["lr"] == 1e-4 and t.optim_d["betas"] == [0.9, 0.99]
    assert t.pixel_opt["loss_weight"] == t.perceptual_opt["perceptual_weight"] == t.gan_opt["loss_weight"] == 1.0
    assert t.perceptual_opt["vgg_type"] == "vgg19"
    assert gan.network_d == {"type": "UNetDiscriminatorSN", "num_in_ch": 3, "num_feat": 64, "skip_connection": True}
    assert gan.path.pretrain_network_g.endswith("experiments/VmambaIR_sr_x4_psnr/models/net_g_latest.pth")
    assert gan.path.param_key_g == "params_ema"


def test_realworld_option_files_hold_the_paper_recipe(tmp_path):
    net, gan = _load_recipe(tmp_path, "realsr_x4_psnr.yml"), _load_recipe(tmp_path, "realsr_x4_gan.yml")
    for o in (net, gan):
        ds = o.datasets["train"]
        assert ds.type == "RealESRGANGTDataset" and ds.gt_size == 256 and ds.batch_size_per_gpu == 9
        # the degradation key is typed by the dataset's DegradationSettings: every recipe value is there
        assert {k: getattr(ds.degradation, k) for k in REAL_ESRGAN} == REAL_ESRGAN
        assert o.train.optim_g["betas"] == [0.9, 0.99] and o.train.scheduler["gamma"] == 0.5
        assert o.train.ema_decay == 0.999
        assert o.network_g["num_blocks"] == [6, 2, 2, 1] and o.network_g["num_refinement_blocks"] == 6
    assert net.model_type == "RealSRNetModel" and net.train.gan_opt is None
    t = gan.train
    assert gan.model_type == "RealSRGANModel" and t.total_iter == 300_000
    assert t.optim_g["lr"] == t.optim_d["lr"] == 1e-4
    assert t.pixel_opt["loss_weight"] == t.perceptual_opt["perceptual_weight"] == t.gan_opt["loss_weight"] == 1.0
    assert gan.network_d["num_feat"] == 64 and gan.network_d["skip_connection"] is True
    assert gan.path.pretrain_network_g.endswith("experiments/VmambaIR_realsr_x4_psnr/models/net_g_latest.pth")
    assert gan.path.param_key_g == "params_ema"


def test_degradation_defaults_are_real_esrgans():
    s = parse_degradation(None)
    for key, value in REAL_ESRGAN.items():
        assert getattr(s, key) == value, key
    assert s.kernel_sizes == [7, 9, 11, 13, 15, 17, 19, 21] == s.kernel_sizes2


def test_test_option_files_validate_without_data(tmp_path, capsys):
    for src, sets in (("test_sr_x4.yml", ["Set14", "General100", "Urban100", "Manga109", "DIV2K100"]),
                      ("test_realsr_x4.yml", ["NTIRE2020_Track1", "AIM2019"])):
        missing = []
        opt = load_options(ROOT / "options" / src, [f"path.data_root={tmp_path}"], is_train=False,
                           missing_test_sets=missing)
        assert opt.datasets == {} and [m.split(" ")[0] for m in missing][: len(sets)] == sets
        assert {"lpips", "psnr", "ssim"} <= set(opt.val.metrics)
        assert all(m.get("crop_border") == 4 for m in opt.val.metrics.values())
        assert opt.val.metrics["psnr"]["test_y_channel"] and opt.val.metrics["ssim"]["test_y_channel"]
        assert run_benchmark(["-opt", str(ROOT / "options" / src), "--set", f"path.data_root={tmp_path}",
                              "--set", f"path.root={tmp_path}"]) == 2
        err = capsys.readouterr().err
        assert "No test set found" in err and "Unknown option" not in err


# ----------------------------------------------------------------------------- degradation
def _degradation_batch(seed: int, n: int = 2, **settings):
    """Dataset items (seeded kernels / crops) + the seeded on-device degradation -> (lq, gt, gt_usm)."""
    gt_dir = Path(settings.pop("gt_dir"))
    deg = {"crop_pad_size": 72, **settings}
    ds = RealESRGANGTDataset({"dataroot_gt": str(gt_dir), "gt_size": 32, "degradation": deg, "use_hflip": True})
    items = [ds[(i % len(ds), seed * 100 + i)] for i in range(n)]
    batch = {k: torch.stack([it[k] for it in items]) for k in ("gt", "kernel1", "kernel2", "sinc_kernel")}
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    degrader = RealESRGANDegradation(ds.settings, scale=4)
    lq, gt, gt_usm = degrade_batch(degrader, None, batch, 32, torch.device("cpu"))
    return lq, gt, gt_usm, batch


@pytest.fixture()
def gt_folder(tmp_path):
    folder = tmp_path / "gt"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), _photo(90, 80, 1))
    cv2.imwrite(str(folder / "b.png"), _photo(50, 60, 2))  # smaller than crop_pad_size: reflect-padded
    return folder


def test_degradation_is_seeded_and_gives_quantised_lq_of_the_right_size(gt_folder):
    lq, gt, gt_usm, batch = _degradation_batch(3, gt_dir=gt_folder)
    assert batch["gt"].shape == (2, 3, 72, 72)
    assert batch["kernel1"].shape == batch["kernel2"].shape == batch["sinc_kernel"].shape == (2, 21, 21)
    for k in ("kernel1", "kernel2", "sinc_kernel"):
        assert torch.allclose(batch[k].sum((1, 2)), torch.ones(2), atol=1e-4)
    assert lq.shape == (2, 3, 8, 8) and gt.shape == gt_usm.shape == (2, 3, 32, 32)
    assert lq.dtype == torch.float32 and lq.min() >= 0 and lq.max() <= 1
    assert torch.allclose(lq * 255, (lq * 255).round(), atol=1e-3)  # 8-bit values
    assert not torch.equal(gt, gt_usm)  # the loss targets are sharpened

    lq2, gt2, _, batch2 = _degradation_batch(3, gt_dir=gt_folder)
    assert all(torch.equal(batch[k], batch2[k]) for k in batch)
    assert torch.equal(lq, lq2) and torch.equal(gt, gt2)
    lq3, _, _, batch3 = _degradation_batch(4, gt_dir=gt_folder)
    assert not torch.equal(lq, lq3) and not torch.equal(batch["kernel1"], batch3["kernel1"])


def test_degradation_bf16_autocast_does_not_change_it(gt_folder):
    lq, *_ = _degradation_batch(5, gt_dir=gt_folder)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lq_autocast, *_ = _degradation_batch(5, gt_dir=gt_folder)
    assert lq_autocast.dtype == torch.float32 and torch.equal(lq, lq_autocast)


def test_kernel_sampling_follows_the_probabilities():
    s = parse_degradation(None)
    rng_state = (random.getstate(), np.random.get_state())
    random.seed(0)
    np.random.seed(0)
    n, impulses, sizes = 400, 0, set()
    for _ in range(n):
        k1, _, sinc = sample_kernels(s)
        impulses += int(sinc[10, 10] == 1 and sinc.sum() == 1)
        nz = torch.nonzero(k1.abs() > 0)
        sizes.add(int(nz[:, 0].max() - nz[:, 0].min() + 1))
    random.setstate(rng_state[0])
    np.random.set_state(rng_state[1])
    # final_sinc_prob 0.8: ~20 % of the final kernels are the identity (binomial sd 2 %).
    assert abs(impulses / n - 0.2) < 0.07
    assert max(sizes) == 21 and min(sizes) <= 9 and all(v % 2 for v in sizes)


def test_training_pair_pool_mixes_batches_and_keeps_pairs():
    pool = TrainingPairPool(4)
    seen = []
    for step in range(6):
        vals = torch.tensor([2.0 * step, 2.0 * step + 1])
        lq = vals.view(2, 1, 1, 1).expand(2, 3, 2, 2).clone()
        gt = (vals * 10).view(2, 1, 1, 1).expand(2, 3, 8, 8).clone()
        out_lq, out_gt = pool(lq, gt)
        assert out_lq.shape == lq.shape and out_gt.shape == gt.shape
        got = out_lq[:, 0, 0, 0]
        assert torch.equal(out_gt[:, 0, 0, 0], got * 10)  # pairs stay pairs
        if step < 2:  # filling: passes through
            assert torch.equal(got, vals)
        else:  # from the pool: earlier batches' pairs (or this one's, once it is in)
            assert set(got.tolist()) <= set(range(2 * step + 2)) and len(set(got.tolist())) == 2
        seen += got.tolist()
    assert set(seen[4:]) - {8.0, 9.0, 10.0, 11.0}  # some pair of an earlier batch came back later


def test_bad_degradation_option_exits_2(tmp_path, gt_folder, capsys):
    opt = _tiny_recipe("realsr_x4_psnr.yml", tmp_path, "bad", **{"datasets.train.dataroot_gt": str(gt_folder)})
    assert train_main(["-opt", str(opt), "--set", "datasets.train.degradation.sinc_prb=0.2"]) == 2
    err = capsys.readouterr().err
    assert "datasets.train.degradation.sinc_prb" in err and "sinc_prob" in err
    assert train_main(["-opt", str(opt), "--set", "datasets.train.degradation.queue_size=5"]) == 2
    err = capsys.readouterr().err
    assert "queue_size" in err and "(5)" in err and "batch size (2)" in err


# ----------------------------------------------------------------------------- stages end to end
def _build_model(opt_path):
    from basicsr.utils.registry import MODEL_REGISTRY
    opt = load_options(opt_path)
    return MODEL_REGISTRY.get(opt.model_type)(opt, DistContext())


def _check_stage2_starts_from_stage1_ema(stage1_exp: Path, stage2_opt: Path):
    ema = load_network_weights(stage1_exp / "models" / "net_g_latest.pth", key="params_ema")
    plain = load_network_weights(stage1_exp / "models" / "net_g_latest.pth", key="params")
    assert any(not torch.equal(ema[k], plain[k]) for k in ema)  # so the check below can tell them apart
    model = _build_model(stage2_opt)
    state = model.networks["net_g"].state_dict()
    assert all(torch.equal(state[k], ema[k]) for k in ema)
    assert set(model.optimizers) == {"optim_g", "optim_d"} and set(model.schedulers) == {"optim_g", "optim_d"}


def test_bicubic_stage1_then_stage2_one_iteration_each(tmp_path, capsys):
    data = tmp_path / "Datasets" / "train" / "DF2K"
    _write_sr_pairs(data / "DF2K_HR_sub", data / "DF2K_LR_bicubic_X4_sub", 3, lr_size=(10, 12))
    stage1 = _tiny_recipe("sr_x4_psnr.yml", tmp_path, "sr1", **{"datasets.val": _val_section(tmp_path)})
    assert train_main(["-opt", str(stage1)]) == 0
    out = capsys.readouterr().out
    assert "iter 1/1" in out and "l_pix" in out and "Validation Val (1 images) at iteration 1:" in out
    assert all(f" {m} " in out.split("Validation Val")[1] for m in ("lpips", "psnr", "ssim"))

    stage2 = _tiny_recipe("sr_x4_gan.yml", tmp_path, "sr2", **{
        "path.pretrain_network_g": str(tmp_path / "experiments" / "sr1" / "models" / "net_g_latest.pth")})
    assert train_main(["-opt", str(stage2)]) == 0
    out = capsys.readouterr().out
    for key in ("l_g_pix", "l_g_percep", "l_g_gan", "l_d_real", "l_d_fake"):
        assert key in out
    exp2 = tmp_path / "experiments" / "sr2" / "models"
    assert {p.name for p in exp2.iterdir()} >= {"net_g_latest.pth", "net_d_latest.pth"}
    _check_stage2_starts_from_stage1_ema(tmp_path / "experiments" / "sr1", stage2)


def test_realworld_stage1_then_stage2_one_iteration_each(tmp_path, gt_folder, capsys):
    gt = str(gt_folder)
    stage1 = _tiny_recipe("realsr_x4_psnr.yml", tmp_path, "rs1", **{"datasets.train.dataroot_gt": gt})
    assert train_main(["-opt", str(stage1)]) == 0
    assert "iter 1/1" in capsys.readouterr().out
    stage2 = _tiny_recipe("realsr_x4_gan.yml", tmp_path, "rs2", **{
        "datasets.train.dataroot_gt": gt,
        "path.pretrain_network_g": str(tmp_path / "experiments" / "rs1" / "models" / "net_g_latest.pth")})
    assert train_main(["-opt", str(stage2)]) == 0
    out = capsys.readouterr().out
    assert "l_g_gan" in out and "l_d_fake" in out
    _check_stage2_starts_from_stage1_ema(tmp_path / "experiments" / "rs1", stage2)


def test_realworld_losses_see_the_sharpened_gt_per_option(tmp_path, gt_folder):
    opt = _tiny_recipe("realsr_x4_gan.yml", tmp_path, "targets", **{"datasets.train.dataroot_gt": str(gt_folder),
                                                                      "path.pretrain_network_g": None})
    model = _build_model(opt)
    ds = RealESRGANGTDataset(load_options(opt).datasets["train"])
    batch = {k: torch.stack([ds[(i, i)][k] for i in range(2)]) for k in ("gt", "kernel1", "kernel2", "sinc_kernel")}
    model.feed_data(batch)
    assert model.lq.shape == (2, 3, 8, 8) and model.gt.shape == (2, 3, 32, 32)
    pix, percep, gan = model.loss_targets()
    assert pix is model.gt_usm and percep is model.gt_usm and gan is model.gt  # l1/percep usm, gan plain
    assert not torch.equal(model.gt, model.gt_usm)


def test_each_rank_degrades_differently_and_resume_replays(tmp_path, gt_folder):
    from basicsr.utils.registry import MODEL_REGISTRY
    opt_path = _tiny_recipe("realsr_x4_psnr.yml", tmp_path, "ranks", **{"datasets.train.dataroot_gt": str(gt_folder),
                                                                         "datasets.train.degradation.queue_size": 0})
    opt = load_options(opt_path)
    ds = RealESRGANGTDataset(opt.datasets["train"])
    batch = {k: torch.stack([ds[(i, i)][k] for i in range(2)]) for k in ("gt", "kernel1", "kernel2", "sinc_kernel")}

    def lq_of(rank, state=None):
        model = MODEL_REGISTRY.get("RealSRNetModel")(opt, DistContext(rank=rank))
        if state is not None:
            model.load_state_dict(state)
        torch.manual_seed(123)  # the training loop's own streams do not decide the degradation
        model.feed_data(batch)
        return model.lq, model

    lq0, model0 = lq_of(0)
    assert torch.equal(lq0, lq_of(0)[0]) and not torch.equal(lq0, lq_of(1)[0])
    state = model0.state_dict()
    assert state["degraded_batches"] == 1
    model0.feed_data(batch)
    assert torch.equal(model0.lq, lq_of(0, state)[0])  # the second batch, also after a resume
    assert not torch.equal(model0.lq, lq0)


# ----------------------------------------------------------------------------- GAN step mechanics
def _paired_gan_options(tmp_path, **train):
    data = tmp_path / "Datasets"
    _write_sr_pairs(data / "hr", data / "lr", 2, lr_size=(8, 8))
    raw = {"name": "mech", "model_type": "SRGANRestorationModel", "scale": 4, "num_gpu": 0,
           "datasets": {"train": {"name": "t", "type": "PairedImageFolderDataset", "dataroot_gt": str(data / "hr"),
                                  "dataroot_lq": str(data / "lr"), "gt_size": 32, "num_worker_per_gpu": 0}},
           "network_g": dict(TINY_SR_NET), "network_d": dict(TINY_D), "path": {"root": str(tmp_path)},
           "train": {"total_iter": 10, "optim_g": {"type": "Adam", "lr": 2e-4, "betas": [0.9, 0.99]},
                     "optim_d": {"type": "Adam", "lr": 1e-4, "betas": [0.9, 0.99]},
                     "scheduler": {"type": "MultiStepLR", "milestones": [3], "gamma": 0.5},
                     "pixel_opt": {"type": "L1Loss", "loss_weight": 1.0},
                     "gan_opt": {"type": "GANLoss", "gan_type": "vanilla", "loss_weight": 1.0},
                     "ema_decay": 0.5, "bf16": False, **train}}
    path = tmp_path / "mech.yml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _snapshot(net):
    return {k: v.detach().clone() for k, v in net.state_dict().items() if v.dtype.is_floating_point}


def _changed(before, net):
    now = net.state_dict()
    return any(not torch.equal(before[k], now[k]) for k in before)


def test_generator_and_discriminator_alternate_with_the_configured_ratio(tmp_path):
    model = _build_model(_paired_gan_options(tmp_path, net_d_iters=2, net_d_init_iters=2))
    torch.manual_seed(0)
    model.feed_data({"lq": torch.rand(2, 3, 8, 8), "gt": torch.rand(2, 3, 32, 32)})
    g_updates, d_updates = [], []
    for it in range(1, 7):
        g0, d0 = _snapshot(model.networks["net_g"]), _snapshot(model.networks["net_d"])
        losses = model.optimize_parameters(it)
        g_updates.append(_changed(g0, model.networks["net_g"]))
        d_updates.append(_changed(d0, model.networks["net_d"]))
        assert ("l_g_gan" in losses) == g_updates[-1]
        assert all(torch.isfinite(v) for v in losses.values())
        model.update_learning_rate(it)
    # G: iterations that are multiples of net_d_iters (2) after net_d_init_iters (2); D: every one.
    assert g_updates == [False, False, False, True, False, True]
    assert d_updates == [True] * 6
    # Separate optimizers and schedulers: lr 2e-4 (G), 1e-4 (D), both halved at milestone 3.
    assert model.optimizers["optim_g"].param_groups[0]["lr"] == pytest.approx(1e-4)
    assert model.optimizers["optim_d"].param_groups[0]["lr"] == pytest.approx(5e-5)
    assert all(p.requires_grad for p in model.networks["net_d"].parameters())


def test_ema_update_follows_the_decay(tmp_path):
    model = _build_model(_paired_gan_options(tmp_path))
    net, ema = model.networks["net_g"], model.ema["net_g"].module
    model.feed_data({"lq": torch.rand(2, 3, 8, 8), "gt": torch.rand(2, 3, 32, 32)})
    ema_before = _snapshot(ema)
    model.optimize_parameters(1)
    assert _changed(ema_before, ema)
    now, ema_now = net.state_dict(), ema.state_dict()
    for k in ema_before:  # ema = 0.5 * ema + 0.5 * w  (ema_decay 0.5)
        assert torch.allclose(ema_now[k], 0.5 * ema_before[k] + 0.5 * now[k], atol=1e-6)


def test_gan_model_without_discriminator_is_an_option_error(tmp_path):
    path = _paired_gan_options(tmp_path)
    raw = yaml.safe_load(path.read_text())
    del raw["network_d"]
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(OptionsError, match="network_d"):
        _build_model(path)


# ----------------------------------------------------------------------------- metrics and losses
def test_lpips_and_niqe_metrics():
    from vmambair.metrics.lpips_metric import calculate_lpips, calculate_niqe_score
    a, b = _photo(64, 64, 1), _photo(64, 64, 2)
    assert calculate_lpips(a, a, pretrained=False) == pytest.approx(0.0, abs=1e-6)
    d_ab = calculate_lpips(a, b, pretrained=False)
    assert d_ab > 0 and math.isfinite(d_ab)
    assert calculate_lpips(a, b, crop_border=4, pretrained=False) != d_ab
    with pytest.raises(ValueError, match="one size"):
        calculate_lpips(a, b[:32], pretrained=False)
    img = _photo(200, 200, 3)
    sharp, blurred = calculate_niqe_score(img), calculate_niqe_score(cv2.GaussianBlur(img, (0, 0), 3))
    assert math.isfinite(sharp) and math.isfinite(blurred) and sharp != blurred
    with pytest.raises(ValueError, match="96x96"):
        calculate_niqe_score(img[:90])


def test_lpips_loads_its_backbone_from_the_torchvision_weights(monkeypatch):
    """The backbone layers of lpips get the torchvision model's weights (layer indices match)."""
    import torchvision

    from vmambair.metrics import lpips_metric
    torch.manual_seed(1)
    tv = torchvision.models.alexnet(weights=None)
    monkeypatch.setattr(lpips_metric, "build_torchvision_backbone", lambda *a, **k: tv)
    model = lpips_metric.build_lpips("alex", pretrained=True, backbone_weights="unused", device=torch.device("cpu"))
    convs = [m for s in range(1, 6) for m in getattr(model.net, f"slice{s}").children()
             if isinstance(m, torch.nn.Conv2d)]
    tv_convs = [m for m in tv.features if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == len(tv_convs) == 5
    assert all(torch.equal(c.weight, t.weight) for c, t in zip(convs, tv_convs))


def test_perceptual_loss_with_random_vgg19():
    from vmambair.losses import VGGPerceptualLoss
    loss = VGGPerceptualLoss({"conv1_2": 0.1, "conv3_4": 1, "conv5_4": 1}, pretrained=False)
    x, y = torch.rand(1, 3, 32, 32, requires_grad=True), torch.rand(1, 3, 32, 32)
    same, style = loss(y, y)
    assert same.item() == 0 and style is None
    percep, _ = loss(x, y)
    percep.backward()
    assert percep.item() > 0 and x.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in loss.parameters())
    with pytest.raises(ValueError, match="conv9_9"):
        VGGPerceptualLoss({"conv9_9": 1.0}, pretrained=False)


def test_backbone_weights_lookup_and_errors(tmp_path, monkeypatch):
    from vmambair.losses import backbones
    from vmambair.losses.backbones import BackboneWeightsError, build_torchvision_backbone, resolve_backbone_weights
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cache = tmp_path / "torch" / "hub" / "checkpoints"

    def no_internet(*args, **kwargs):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(backbones.torch.hub, "load_state_dict_from_url", no_internet)

    # Neither cached nor downloadable: the message names the file, the cache folder and the option.
    with pytest.raises(BackboneWeightsError) as info:
        resolve_backbone_weights("vgg19", None, "vgg_weights")
    msg = str(info.value)
    assert "vgg19-dcbb9e9d.pth" in msg and str(cache) in msg and "vgg_weights" in msg and "URLError" in msg
    # An explicit path that does not exist.
    with pytest.raises(BackboneWeightsError, match="missing.pth"):
        resolve_backbone_weights("vgg19", str(tmp_path / "missing.pth"), "vgg_weights")
    # The torch hub cache is used when the file is there; an explicit path wins over it.
    cache.mkdir(parents=True)
    (cache / "alexnet-owt-7be5be79.pth").write_bytes(b"")
    assert resolve_backbone_weights("alexnet") == cache / "alexnet-owt-7be5be79.pth"
    own = tmp_path / "own.pth"
    torch.save({"not": torch.zeros(1)}, own)
    assert resolve_backbone_weights("alexnet", str(own)) == own
    # A file that is not the torchvision state dict is named.
    with pytest.raises(BackboneWeightsError, match="own.pth"):
        build_torchvision_backbone("alexnet", True, str(own))


def test_missing_vgg_weights_stop_training_with_the_file_name(tmp_path, gt_folder, monkeypatch, capsys):
    from vmambair.losses import backbones
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(backbones.torch.hub, "load_state_dict_from_url",
                        lambda *a, **k: (_ for _ in ()).throw(urllib.error.URLError("offline")))
    opt = _tiny_recipe("realsr_x4_gan.yml", tmp_path, "novgg", **{"datasets.train.dataroot_gt": str(gt_folder),
                                                                    "path.pretrain_network_g": None})
    assert train_main(["-opt", str(opt), "--set", "train.perceptual_opt.pretrained=true"]) == 1
    err = capsys.readouterr().err
    assert "vgg19-dcbb9e9d.pth" in err and str(tmp_path / "torch" / "hub" / "checkpoints") in err
    assert "Traceback" not in err


# ----------------------------------------------------------------------------- test.py tables
def _save_tiny_sr_weights(path):
    from vmambair.archs import VmambaIR
    from vmambair.engine.checkpoint import save_network
    torch.manual_seed(0)
    save_network({"params": VmambaIR(**{k: v for k, v in TINY_SR_NET.items() if k != "type"}),
                  "params_ema": VmambaIR(**{k: v for k, v in TINY_SR_NET.items() if k != "type"})}, path)


def _test_options(tmp_path, src):
    _save_tiny_sr_weights(tmp_path / "net_g.pth")
    raw = yaml.safe_load((ROOT / "options" / src).read_text())
    raw["network_g"] = dict(TINY_SR_NET)
    raw["path"].update(root=str(tmp_path), data_root=str(tmp_path / "Datasets"),
                       pretrain_network_g=str(tmp_path / "net_g.pth"))
    raw["val"]["metrics"]["lpips"]["pretrained"] = False
    path = tmp_path / "test.yml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_bicubic_benchmark_table(tmp_path, capsys):
    data = tmp_path / "Datasets" / "test"
    _write_sr_pairs(data / "Set14" / "HR", data / "Set14" / "LR_bicubic_X4", 2, lr_size=(16, 18))
    _write_sr_pairs(data / "Manga109" / "HR", data / "Manga109" / "LR_bicubic_X4", 1, lr_size=(18, 16), seed=5)
    assert run_benchmark(["-opt", str(_test_options(tmp_path, "test_sr_x4.yml")), "--set", "num_gpu=0"]) == 0
    out = capsys.readouterr().out
    for name in ("General100", "Urban100", "DIV2K100"):
        assert f"skipping test set {name}" in out
    results = tmp_path / "results" / "VmambaIR_sr_x4_test"
    csv = (results / "metrics.csv").read_text().splitlines()
    assert csv[0] == "set,images,lpips,psnr,ssim"
    assert csv[1].startswith("Set14,2,") and csv[2].startswith("Manga109,1,") and len(csv) == 3
    assert all(v != "-" and math.isfinite(float(v)) for line in csv[1:] for v in line.split(",")[2:])
    md = (results / "metrics.md").read_text()
    assert "| set | images | lpips | psnr | ssim |" in md and "| Set14 | 2 |" in md and "mean (of sets)" in md


def test_realworld_benchmark_table_with_a_set_without_ground_truth(tmp_path, capsys):
    data = tmp_path / "Datasets" / "test"
    _write_sr_pairs(data / "NTIRE2020_Track1" / "HR", data / "NTIRE2020_Track1" / "LR", 1, lr_size=(27, 50))
    (data / "RealPhotos").mkdir(parents=True)
    cv2.imwrite(str(data / "RealPhotos" / "p.png"), _photo(27, 50, 9))
    assert run_benchmark(["-opt", str(_test_options(tmp_path, "test_realsr_x4.yml")), "--set", "num_gpu=0"]) == 0
    assert "skipping test set AIM2019" in capsys.readouterr().out
    csv = (tmp_path / "results" / "VmambaIR_realsr_x4_test" / "metrics.csv").read_text().splitlines()
    assert csv[0] == "set,images,lpips,psnr,ssim,niqe"
    ntire, photos = csv[1].split(","), csv[2].split(",")
    assert ntire[:2] == ["NTIRE2020_Track1", "1"] and all(math.isfinite(float(v)) for v in ntire[2:])
    assert photos[:5] == ["RealPhotos", "1", "-", "-", "-"] and math.isfinite(float(photos[5]))


def test_gan_model_refuses_cuda_graph_option(tmp_path, capsys):
    data = tmp_path / "Datasets" / "train" / "DF2K"
    _write_sr_pairs(data / "DF2K_HR_sub", data / "DF2K_LR_bicubic_X4_sub", 2, lr_size=(10, 12))
    opt = _tiny_recipe("sr_x4_gan.yml", tmp_path, "gan_graph", **{"path.pretrain_network_g": None})
    assert train_main(["-opt", str(opt), "--set", "train.cuda_graph=true"]) == 2
    err = capsys.readouterr().err
    assert "'train.cuda_graph' is not supported by SRGANRestorationModel" in err and "train.compile" in err
