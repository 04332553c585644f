"""Checkpoints of the authors' code (AlphacatPlus/VmambaIR): their layouts, conversion, loading,
and the channel-scan variants of their deraining networks.

The authors' state dicts are built here from names and shapes written down from reading their
classes (MambaRealSR11, Mamber33, Mamber32), independently of vmambair.archs.authors' tables.
"""
import math

import pytest
import torch

import vmambair
from vmambair.apps import convert_original
from vmambair.archs import VmambaIR
from vmambair.archs.authors import convert_state_dict, is_authors_layout
from vmambair.config import OptionsError, build_from_spec, load_options
from vmambair.engine.checkpoint import CheckpointError, PartialLoadError, load_into_network

ROOT_STAGES = [  # (their stage, width multiple of dim, index into (num_blocks..., refinement))
    ("encoder_level1", 1, 0), ("encoder_level2", 2, 1), ("encoder_level3", 4, 2), ("latent", 8, 3),
    ("decoder_level3", 4, 2), ("decoder_level2", 2, 1), ("decoder_level1", 2, 0), ("refinement", 2, 4),
]


def their_block_shapes(c, scan, N=16):
    """Their MamberBlock(dim=c) with SS2D_1(d_model=c, ssm_ratio=1): name -> shape."""
    R, h = math.ceil(c / 16), int(c * 2.66)
    shapes = {
        "norm1.body.weight": (c,), "norm1.body.bias": (c,),
        "attn.channel_norm.body.weight": (c,), "attn.channel_norm.body.bias": (c,),
        "attn.in_conv.weight": (2 * c, c, 1, 1), "attn.in_conv.bias": (2 * c,),
        "attn.conv2d.weight": (c, 1, 3, 3), "attn.conv2d.bias": (c,),
        "attn.out_norm.body.weight": (c,), "attn.out_norm.body.bias": (c,),
        "attn.x_proj_weight": (4, R + 2 * N, c), "attn.dt_projs_weight": (4, c, R), "attn.dt_projs_bias": (4, c),
        "attn.A_logs": (4 * c, N), "attn.Ds": (4 * c,),
        "attn.out_conv.weight": (c, c, 1, 1), "attn.out_conv.bias": (c,),
        "norm2.body.weight": (c,), "norm2.body.bias": (c,),
        "ffn.project_in.weight": (2 * h, c, 1, 1), "ffn.dwconv.weight": (2 * h, 1, 3, 3),
        "ffn.project_out.weight": (c, h, 1, 1),
    }
    if scan == "sr":  # MambaRealSR11: one feature, the block's rank R and state N
        shapes.update({"attn.xc_proj_weight": (2, R + 2 * N, 1), "attn.dtc_projs_weight": (2, 1, R),
                       "attn.dtc_projs_bias": (2, 1), "attn.Ac_logs": (2, N), "attn.Dsc": (2,)})
    else:  # Mamber33 (dc_inner 2) / Mamber32 (dc_inner 4): rank 6, state 16
        e = {"mamber33": 2, "mamber32": 4}[scan]
        shapes.update({"attn.conv_cin.weight": (e, 1, 1, 1), "attn.conv_cin.bias": (e,),
                       "attn.conv_cout.weight": (1, e, 1, 1), "attn.conv_cout.bias": (1,),
                       "attn.xc_proj_weight": (2, 6 + 32, e), "attn.dtc_projs_weight": (2, e, 6),
                       "attn.dtc_projs_bias": (2, e), "attn.Ac_logs": (2 * e, 16), "attn.Dsc": (2 * e,)})
    return shapes


def their_shapes(scan, dim=8, num_blocks=(1, 1, 1, 1), refinement=1, upsample_stages=2):
    """Their whole network: MambaRealSR11 (scan "sr", x4 tail) or Mamber33/32 (output conv)."""
    C = dim
    shapes = {
        "patch_embed.proj.weight": (C, 3, 3, 3),
        "down1_2.body.0.weight": (C // 2, C, 3, 3), "down2_3.body.0.weight": (C, 2 * C, 3, 3),
        "down3_4.body.0.weight": (2 * C, 4 * C, 3, 3),
        "up4_3.body.0.weight": (16 * C, 8 * C, 3, 3), "reduce_chan_level3.weight": (4 * C, 8 * C, 1, 1),
        "up3_2.body.0.weight": (8 * C, 4 * C, 3, 3), "reduce_chan_level2.weight": (2 * C, 4 * C, 1, 1),
        "up2_1.body.0.weight": (4 * C, 2 * C, 3, 3),
    }
    depths = list(num_blocks) + [refinement]
    for stage, mult, i in ROOT_STAGES:
        for b in range(depths[i]):
            for k, s in their_block_shapes(mult * C, scan).items():
                shapes[f"{stage}.{b}.{k}"] = s
    if scan == "sr":
        for j in range(upsample_stages):  # common.Upsampler: conv 2C -> 8C (+ bias), PixelShuffle(2)
            shapes[f"tail.0.{2 * j}.weight"] = (8 * C, 2 * C, 3, 3)
            shapes[f"tail.0.{2 * j}.bias"] = (8 * C,)
        shapes["tail.1.weight"], shapes["tail.1.bias"] = (3, 2 * C, 3, 3), (3,)
    else:
        shapes["output.weight"] = (3, 2 * C, 3, 3)
    return shapes


def random_tensors(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) * 0.1 for k, s in shapes.items()}


FAMILIES = [("sr", "MambaRealSR11", 4), ("mamber33", "Mamber33", 1), ("mamber32", "Mamber32", 1)]


def build(network_g):
    return VmambaIR(**{k: v for k, v in network_g.items() if k != "type"})


@pytest.mark.parametrize("scan,family,scale", FAMILIES)
def test_convert_each_family_places_every_tensor(scan, family, scale):
    theirs = random_tensors(their_shapes(scan, num_blocks=(2, 1, 1, 1), refinement=2))
    assert is_authors_layout(theirs)
    conv = convert_state_dict(theirs)
    assert conv.family == family and conv.scale == scale
    g = conv.network_g
    assert (g["dim"], g["num_blocks"], g["num_refinement_blocks"], g["channel_scan"]) == (8, [2, 1, 1, 1], 2, scan)
    net = build(g)
    net.load_state_dict(conv.state_dict, strict=True)
    assert len(conv.state_dict) == len(theirs) == len(net.state_dict())
    # spot checks, by value, of where their tensors went
    pairs = [
        ("patch_embed.proj.weight", net.shallow.weight),
        ("encoder_level1.1.attn.x_proj_weight", net.encoder1[1].oss.planar_scan.ssm.x_proj_weight),
        ("decoder_level3.0.attn.A_logs", net.decoder3[0].oss.planar_scan.ssm.A_logs),
        ("latent.0.attn.xc_proj_weight", net.latent[0].oss.channel_scan.ssm.x_proj_weight),
        ("refinement.1.attn.dtc_projs_bias", net.refinement[1].oss.channel_scan.ssm.dt_projs_bias),
        ("encoder_level2.0.attn.Ac_logs", net.encoder2[0].oss.channel_scan.ssm.A_logs),
        ("decoder_level1.0.attn.Dsc", net.decoder1[0].oss.channel_scan.ssm.Ds),
        ("decoder_level2.0.attn.channel_norm.body.bias", net.decoder2[0].oss.channel_scan.norm.bias),
        ("encoder_level3.0.ffn.project_out.weight", net.encoder3[0].ffn.project_out.proj.weight),
        ("up4_3.body.0.weight", net.up3[0].weight),
        ("reduce_chan_level2.weight", net.reduce2.weight),
    ]
    if scan == "sr":
        pairs += [("tail.0.2.bias", net.tail[2].bias), ("tail.1.weight", net.tail[4].weight)]
    else:
        pairs += [("output.weight", net.tail.weight),
                  ("encoder_level1.0.attn.conv_cin.bias", net.encoder1[0].oss.channel_scan.lift.bias),
                  ("latent.0.attn.conv_cout.weight", net.latent[0].oss.channel_scan.merge.weight)]
    for key, param in pairs:
        assert torch.equal(theirs[key], param.detach()), key


@pytest.mark.parametrize("stages,scale", [(1, 2), (3, 8)])
def test_sr_scale_is_read_from_the_tail(stages, scale):
    conv = convert_state_dict(random_tensors(their_shapes("sr", upsample_stages=stages)))
    assert conv.scale == scale
    net = build(conv.network_g)
    net.load_state_dict(conv.state_dict, strict=True)
    assert net(torch.rand(1, 3, 8, 8)).shape == (1, 3, 8 * scale, 8 * scale)


def test_stride0_channel_parameters_become_separate_tensors():
    """Their MambaRealSR11 makes Ac_logs / Dsc stride-0 views (both directions share memory)."""
    theirs = random_tensors(their_shapes("sr"))
    key = "encoder_level1.0.attn.Ac_logs"
    theirs[key] = torch.randn(1, 16).expand(2, 16)
    theirs["encoder_level1.0.attn.Dsc"] = torch.ones(1).expand(2)
    with pytest.raises(RuntimeError):  # what an optimizer step does to such a tensor
        theirs[key].add_(1.0)
    conv = convert_state_dict(theirs)
    a = conv.state_dict["encoder1.0.oss.channel_scan.ssm.A_logs"]
    assert a.stride() == (16, 1) and torch.equal(a[0], a[1])
    a[0].add_(1.0)  # the two directions are independent now
    assert not torch.equal(a[0], a[1])
    net = build(conv.network_g)
    net.load_state_dict(conv.state_dict, strict=True)
    torch.optim.SGD(net.parameters(), lr=0.1).step()  # no parameter is shared


def test_unplaceable_missing_and_misshaped_tensors_are_named():
    theirs = random_tensors(their_shapes("mamber32"))
    extra = dict(theirs, **{"encoder_level1.0.ffn.project_in.bias": torch.zeros(42), "skip_conv.weight": torch.zeros(16, 8, 1, 1)})
    with pytest.raises(CheckpointError, match=r"skip_conv\.weight") as err:
        convert_state_dict(extra)
    assert "encoder_level1.0.ffn.project_in.bias" in str(err.value)

    missing = dict(theirs)
    del missing["latent.0.attn.Ds"]
    with pytest.raises(CheckpointError, match=r"latent\.0\.attn\.Ds"):
        convert_state_dict(missing)

    wrong = dict(theirs)
    wrong["encoder_level2.0.attn.dtc_projs_weight"] = torch.zeros(2, 4, 5)
    with pytest.raises(CheckpointError, match=r"encoder_level2\.0\.attn\.dtc_projs_weight"):
        convert_state_dict(wrong)

    three = random_tensors(their_shapes("mamber33"))
    for k in [k for k in three if k.endswith("conv_cin.weight")]:
        three[k] = torch.zeros(3, 1, 1, 1)
    with pytest.raises(CheckpointError, match="3 features"):
        convert_state_dict(three)

    uneven = random_tensors(their_shapes("sr", num_blocks=(2, 1, 1, 1)))
    for k in [k for k in uneven if k.startswith("decoder_level1.1.")]:
        del uneven[k]
    with pytest.raises(CheckpointError, match="decoder_level1"):
        convert_state_dict(uneven)


def test_our_weights_are_not_the_authors_layout():
    assert not is_authors_layout(VmambaIR(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1).state_dict())


@pytest.mark.parametrize("scan,family,scale", FAMILIES)
def test_checkpoint_of_their_code_loads_directly_with_a_note(tmp_path, scan, family, scale):
    theirs = random_tensors(their_shapes(scan))
    path = tmp_path / "net_g_300000.pth"
    torch.save({"params": theirs}, path)
    conv = convert_state_dict(theirs)
    net = build(conv.network_g)
    notes = []
    report = load_into_network(net, path, key="params", strict=True, log=notes.append)
    assert report.authors.family == family and report.loaded == report.total == len(theirs)
    assert len(notes) == 1 and family in notes[0] and "converted" in notes[0]
    assert torch.equal(net.latent[0].oss.in_proj.proj.bias, theirs["latent.0.attn.in_conv.bias"])

    other = VmambaIR(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=2, scale=scale,
                     channel_scan=scan)  # one refinement block more than the file
    with pytest.raises(CheckpointError, match="build it with network_g"):
        load_into_network(other, path, strict=True, log=notes.append)


def test_non_strict_load_counts_and_refuses_a_mostly_random_network(tmp_path):
    small = VmambaIR(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1)
    path = tmp_path / "w.pth"
    torch.save({"params": small.state_dict()}, path)
    bigger = VmambaIR(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=2)
    notes = []
    report = load_into_network(bigger, path, strict=False, log=notes.append)
    assert report.loaded == len(small.state_dict()) < report.total == len(bigger.state_dict())
    assert f"loaded {report.loaded} of the {report.total} tensors" in notes[-1]
    assert torch.equal(bigger.refinement[0].oss.out_proj.proj.weight, small.refinement[0].oss.out_proj.proj.weight)

    wider = VmambaIR(dim=16, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1)
    before = {k: v.clone() for k, v in wider.state_dict().items()}
    with pytest.raises(PartialLoadError, match="mostly random") as err:
        load_into_network(wider, path, strict=False, log=notes.append)
    assert isinstance(err.value, OptionsError) and isinstance(err.value, CheckpointError)
    assert all(torch.equal(before[k], v) for k, v in wider.state_dict().items())  # nothing half-loaded


def test_convert_original_app_writes_self_describing_weights(tmp_path, capsys):
    theirs = random_tensors(their_shapes("mamber32", num_blocks=(1, 2, 1, 1)))
    src, dst = tmp_path / "mamber32.pth", tmp_path / "out" / "mamber32.safetensors"
    torch.save({"params": {k: v * 0 for k, v in theirs.items()}, "params_ema": theirs}, src)
    assert convert_original.main([str(src), "-o", str(dst)]) == 0
    assert "Mamber32" in capsys.readouterr().out
    model = vmambair.load_model(dst)
    assert not model.training and model.vmambair_metadata["task"] == "derain"
    assert model.vmambair_metadata["key"] == "params_ema"  # the EMA entry by default
    ref = build(convert_state_dict(theirs).network_g)
    ref.load_state_dict(convert_state_dict(theirs).state_dict)
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref.eval()(x), rtol=0, atol=0)

    bare = tmp_path / "bare.pth"
    torch.save(random_tensors(their_shapes("sr")), bare)
    assert convert_original.main([str(bare), "-o", str(tmp_path / "sr.safetensors")]) == 0
    assert vmambair.load_model(tmp_path / "sr.safetensors").vmambair_metadata["scale"] == "4"


def test_convert_original_app_refusals(tmp_path, capsys):
    ours = tmp_path / "ours.pth"
    torch.save({"params": VmambaIR(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1).state_dict()}, ours)
    assert convert_original.main([str(ours), "-o", str(tmp_path / "x.safetensors")]) == 2
    assert "not a checkpoint of the authors'" in capsys.readouterr().err
    theirs = tmp_path / "theirs.pth"
    shapes = their_shapes("mamber33")
    shapes["encoder_level1.0.attn.mystery"] = (3,)
    torch.save({"params": random_tensors(shapes)}, theirs)
    assert convert_original.main([str(theirs), "-o", str(tmp_path / "y.safetensors")]) == 2
    assert "encoder_level1.0.attn.mystery" in capsys.readouterr().err
    assert not (tmp_path / "y.safetensors").exists()
    assert convert_original.main([str(theirs), "-o", str(tmp_path / "y.pth")]) == 2


# ----------------------------------------------------------------------------- the networks
def count(**kwargs):
    with torch.device("meta"):
        return sum(p.numel() for p in VmambaIR(**kwargs).parameters())


@pytest.mark.parametrize("scan,blocks,expected", [
    ("mamber33", [4, 4, 6, 8], 25_862_118), ("mamber33", [3, 5, 7, 9], 28_699_461),
    ("mamber32", [4, 4, 6, 8], 25_871_770), ("mamber32", [3, 5, 7, 9], 28_709_875),
    ("sr", [4, 4, 6, 8], 25_857_956), (True, [4, 4, 6, 8], 25_857_956),
])
def test_parameter_counts_of_the_authors_classes(scan, blocks, expected):
    """The counts of the authors' classes at dim 48, expansion 2.66, 2 refinement blocks."""
    assert count(num_blocks=blocks, num_refinement_blocks=2, channel_scan=scan) == expected


def test_option_files():
    def params(path):
        opt = load_options(path, ["datasets={}"], is_train=False)
        with torch.device("meta"):
            return opt.network_g, sum(p.numel() for p in build_from_spec("arch", opt.network_g).parameters())
    g, n = params("options/derain.yml")
    assert n == 25_857_956 and "channel_scan" not in g  # the paper's network, unchanged
    g, n = params("options/derain_authors.yml")
    assert n == 28_709_875 and g["channel_scan"] == "mamber32" and list(g["num_blocks"]) == [3, 5, 7, 9]


def test_channel_scan_choices():
    with pytest.raises(ValueError, match="mamber32"):
        VmambaIR(dim=8, num_blocks=[1, 1, 1, 1], channel_scan="mamber31")
    for value, has in ((False, False), ("none", False), ("sr", True)):
        net = VmambaIR(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, channel_scan=value)
        assert (net.encoder1[0].oss.channel_scan is not None) == has
    v1 = VmambaIR(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, channel_scan="mamber32", ablation="V1")
    assert v1.encoder1[0].oss.channel_scan is None


@pytest.mark.parametrize("scan", ["mamber33", "mamber32"])
def test_lifted_channel_scan_combination(scan):
    """Mamber33 combines the channel result as y * c + y, Mamber32 as y + c (checked by replacing
    the channel scan with a known c)."""
    torch.manual_seed(0)
    net = VmambaIR(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, channel_scan=scan)
    oss = net.encoder1[0].oss
    y = torch.rand(1, 8, 4, 4) + 0.5
    c = torch.full((1, 8, 1, 1), 0.25)
    oss.channel_scan.forward = lambda t: c
    oss.out_proj = torch.nn.Identity()
    oss.planar_scan.forward = lambda t: y
    oss.out_norm = torch.nn.Identity()
    x = torch.rand(1, 8, 4, 4)
    with torch.no_grad():
        gate = torch.nn.functional.silu(oss.in_proj(x).chunk(2, dim=1)[1])
        yz = y * gate
        want = yz * c + yz if scan == "mamber33" else yz + c
        torch.testing.assert_close(oss(x), want)


# ----------------------------------------------------------------------------- the apps
def test_restore_py_takes_their_checkpoint_and_test_py_refuses_a_mostly_random_network(tmp_path, capsys):
    import cv2
    import numpy as np
    import yaml

    from tests.helpers import ROOT, TINY_NET, make_pairs
    from vmambair.apps.restore import restore_main
    from vmambair.apps.test import run_benchmark

    theirs = random_tensors(their_shapes("mamber32"))
    weights = tmp_path / "mamber32.pth"
    torch.save({"params": theirs}, weights)
    spec = dict(TINY_NET, channel_scan="mamber32")
    opt = tmp_path / "net.yml"
    opt.write_text(yaml.safe_dump({"name": "net", "scale": 1, "num_gpu": 0, "network_g": spec, "val": {"pad_multiple": 8}}))
    img = tmp_path / "x.png"
    cv2.imwrite(str(img), np.full((8, 8, 3), 128, np.uint8))
    assert restore_main(["-i", str(img), "-o", str(tmp_path / "o"), "-opt", str(opt), "--weights", str(weights),
                         "--device", "cpu", "--tile", "0"]) == 0
    assert "Mamber32" in capsys.readouterr().err and (tmp_path / "o" / "x.png").is_file()

    data = tmp_path / "Datasets"
    make_pairs(data / "test" / "Rain100H", 1, size=(16, 16))
    raw = yaml.safe_load((ROOT / "options" / "test_derain.yml").read_text())
    raw["network_g"] = dict(TINY_NET, dim=16)  # the file holds a dim-8 network
    raw["path"].update(root=str(tmp_path), data_root=str(data), pretrain_network_g=str(weights), strict_load_g=False)
    test_opt = tmp_path / "test.yml"
    test_opt.write_text(yaml.safe_dump(raw))
    assert run_benchmark(["-opt", str(test_opt), "--set", "num_gpu=0"]) == 2
    assert "mostly random" in capsys.readouterr().err


@pytest.mark.parametrize("inner", [2, 4])
def test_lifted_channel_scan_follows_their_steps(inner):
    """LiftedChannelScan against their cforward_corev1 written out step by step (float64)."""
    import torch.nn.functional as F

    from vmambair.archs.vmambair_arch import LiftedChannelScan
    from vmambair.ops.scan_reference import scan_reference

    torch.manual_seed(0)
    d = 12
    mod = LiftedChannelScan(d, inner).double()
    with torch.no_grad():
        for p in mod.parameters():
            p.add_(0.1 * torch.randn_like(p))
    y = torch.randn(2, d, 5, 6, dtype=torch.float64)
    s = mod.ssm
    xc = F.adaptive_avg_pool2d(y, 1).permute(0, 2, 1, 3)                 # (b, 1, d, 1)
    xc = F.conv2d(xc, mod.lift.weight, mod.lift.bias).squeeze(-1)          # (b, e, d)
    xsc = torch.stack([xc, xc.flip(-1)], dim=1)                            # (b, 2, e, d)
    dbl = torch.einsum("bkdl,kcd->bkcl", xsc, s.x_proj_weight)
    dts, Bs, Cs = torch.split(dbl, [6, 16, 16], dim=2)
    dts = torch.einsum("bkrl,kdr->bkdl", dts, s.dt_projs_weight)
    A = -torch.exp(s.A_logs.float())  # their As: from fp32 A_logs; D and the dt bias as stored
    out = scan_reference(xsc.reshape(2, -1, d), dts.reshape(2, -1, d), A, Bs, Cs, s.Ds,
                         s.dt_projs_bias.reshape(-1), delta_softplus=True).view(2, 2, -1, d)
    out = out[:, 0] + out[:, 1].flip(-1)                                    # (b, e, d)
    out = F.conv2d(out.unsqueeze(-1), mod.merge.weight, mod.merge.bias)    # (b, 1, d, 1)
    out = out.transpose(1, 2)                                              # (b, d, 1, 1)
    want = F.layer_norm(out.permute(0, 2, 3, 1), (d,), mod.norm.weight, mod.norm.bias).permute(0, 3, 1, 2)
    with torch.no_grad():
        torch.testing.assert_close(mod(y), want, rtol=1e-12, atol=1e-12)


def test_export_writes_their_checkpoint_in_our_names(tmp_path):
    from safetensors.torch import load_file

    from vmambair.apps.export import export_safetensors

    theirs = random_tensors(their_shapes("sr"))
    torch.save({"params": theirs}, tmp_path / "theirs.pth")
    out = export_safetensors(tmp_path / "theirs.pth", tmp_path / "ours.safetensors")
    flat = load_file(str(out))
    assert set(flat) == set(convert_state_dict(theirs).state_dict)
    assert torch.equal(flat["shallow.weight"], theirs["patch_embed.proj.weight"])
