"""Self-describing weights (vmambair.engine.portable): metadata written by export, training and the
Python API; load_model builds the network from it; files without metadata, metadata that does not
match the tensors and corrupt files are refused with messages naming the file, the fix or the key."""
import json

import pytest
import torch
import yaml
from safetensors import safe_open

import vmambair
from vmambair.archs import VmambaIR
from vmambair.engine.checkpoint import save_network
from vmambair.engine.portable import (CheckpointError, load_model, read_weights, save_weights,
                                      weights_metadata)
from vmambair.apps.export import export_main, export_safetensors
from vmambair.apps.restore import restore_main

from tests.helpers import TINY_NET, one_thread, tiny_options  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(seed=0, **over):
    torch.manual_seed(seed)
    return VmambaIR(**{k: v for k, v in dict(TINY_NET, **over).items() if k != "type"})


def meta(network_g=TINY_NET, **over):
    kw = dict(scale=network_g.get("scale", 1), task="derain", source="unit-test")
    kw.update(over)
    return weights_metadata(network_g, **kw)


def test_metadata_roundtrip_and_load_model(tmp_path):
    net = tiny(0).eval()
    path = save_weights(net.state_dict(), tmp_path / "w.safetensors", meta(experiment="exp", iteration=12))
    tensors, m = read_weights(path)
    assert set(tensors) == set(net.state_dict())
    # plain strings, the network arguments as JSON, the framework version
    assert m["format"] == "vmambair" and m["architecture"] == "VmambaIR" and m["task"] == "derain"
    assert json.loads(m["network_g"]) == TINY_NET
    assert (m["scale"], m["experiment"], m["iteration"]) == ("1", "exp", "12")
    assert m["vmambair_version"] == vmambair.__version__

    loaded = vmambair.load_model(path)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert loaded.vmambair_scale == 1
    x = torch.rand(1, 3, 20, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))


def test_metadata_takes_only_plain_data():
    with pytest.raises(CheckpointError, match="plain data"):
        weights_metadata(dict(TINY_NET, dim=torch.tensor(8)), scale=1, task="x", source="s")
    with pytest.raises(CheckpointError, match="plain data"):
        weights_metadata(dict(TINY_NET, act=print), scale=1, task="x", source="s")
    with pytest.raises(CheckpointError, match="'type'"):
        weights_metadata({"dim": 8}, scale=1, task="x", source="s")


def test_no_metadata_needs_options(tmp_path, capsys):
    net = tiny(1).eval()
    bare = save_weights(net.state_dict(), tmp_path / "bare.safetensors", None)
    pth = tmp_path / "w.pth"
    save_network(net, pth)
    for path in (bare, pth):
        with pytest.raises(CheckpointError, match="-opt") as err:
            load_model(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)
    # restore.py with --weights only: one line, exit status 2
    img_dir = tmp_path / "in"
    img_dir.mkdir()
    import cv2
    import numpy as np
    cv2.imwrite(str(img_dir / "a.png"), np.full((16, 16, 3), 100, np.uint8))
    assert restore_main(["-i", str(img_dir), "-o", str(tmp_path / "out"), "--weights", str(bare),
                         "--device", "cpu"]) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "-opt" in lines[0] and "bare.safetensors" in lines[0]
    # With an options file (or a network_g mapping) both load, .pth with weights_only=True.
    opt = tmp_path / "o.yml"
    opt.write_text(yaml.safe_dump({"name": "x", "network_g": dict(TINY_NET)}))
    x = torch.rand(1, 3, 16, 16)
    for path, options in ((bare, opt), (pth, opt), (pth, TINY_NET)):
        with torch.no_grad():
            assert torch.equal(load_model(path, options=options)(x), net(x))


def test_mismatch_names_first_key(tmp_path):
    net = tiny(0)
    # metadata says dim 16: the first tensor of the network (shallow.weight) differs in shape
    wrong = save_weights(net.state_dict(), tmp_path / "wrong.safetensors", meta(dict(TINY_NET, dim=16)))
    with pytest.raises(CheckpointError, match=r"first mismatching key 'shallow\.weight' has shape \(8, 3, 3, 3\) "
                                              r"in the file, \(16, 3, 3, 3\)"):
        load_model(wrong)
    # a missing tensor is named
    state = net.state_dict()
    missing_key = "encoder2.0.oss.out_proj.proj.bias"
    del state[missing_key]
    partial = save_weights(state, tmp_path / "partial.safetensors", meta())
    with pytest.raises(CheckpointError, match=f"'{missing_key}' is missing"):
        load_model(partial)
    # an extra tensor is named
    state = dict(net.state_dict(), **{"extra.weight": torch.zeros(2)})
    extra = save_weights(state, tmp_path / "extra.safetensors", meta())
    with pytest.raises(CheckpointError, match="'extra.weight' is in the file but not in the network"):
        load_model(extra)
    # an architecture that is not registered
    bogus = save_weights(net.state_dict(), tmp_path / "bogus.safetensors", meta(dict(TINY_NET, type="NoSuchNet")))
    with pytest.raises(CheckpointError, match="NoSuchNet"):
        load_model(bogus)


def test_corrupt_file_names_the_file(tmp_path, capsys):
    good = save_weights(tiny(0).state_dict(), tmp_path / "good.safetensors", meta())
    data = good.read_bytes()
    for name, payload in (("truncated", data[: len(data) // 2]), ("garbage", b"\x00\x01not a safetensors file")):
        bad = tmp_path / f"{name}.safetensors"
        bad.write_bytes(payload)
        with pytest.raises(CheckpointError, match=f"{name}.safetensors' is not a readable safetensors file"):
            load_model(bad)
    assert export_main([str(tmp_path / "truncated.safetensors"), "-o", str(tmp_path / "x.safetensors")]) == 2
    assert "truncated.safetensors" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


def test_export_writes_metadata_and_refuses_without_description(tmp_path, capsys):
    net, ema = tiny(0), tiny(1)
    src = tmp_path / "net_g.pth"
    save_network({"params": net, "params_ema": ema}, src)
    # no options and no metadata in a .pth: refused, nothing written
    assert export_main([str(src)]) == 2
    assert "-opt" in capsys.readouterr().err
    assert not (tmp_path / "net_g.safetensors").exists()
    opt = tmp_path / "realsr_x4_like.yml"
    opt.write_text(yaml.safe_dump({"name": "x", "network_g": dict(TINY_NET)}))
    assert export_main([str(src), "-opt", str(opt), "--key", "params_ema"]) == 0
    out = tmp_path / "net_g.safetensors"
    with safe_open(str(out), "pt") as f:
        m = f.metadata()
    assert json.loads(m["network_g"]) == TINY_NET and m["key"] == "params_ema" and m["source"] == "net_g.pth"
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(load_model(out)(x), ema(x))
    # re-exporting a self-describing file needs no options and keeps the description
    again = export_safetensors(out, tmp_path / "again.safetensors")
    _, m2 = read_weights(again)
    assert m2["network_g"] == m["network_g"] and m2["task"] == m["task"]


def test_training_writes_self_describing_safetensors(tmp_path):
    from vmambair.apps.train import train_main

    opt = tiny_options(tmp_path, name="VmambaIR_derain_tiny", total_iter=2, logger__save_checkpoint_freq=2,
                       logger__save_safetensors=True, val__val_freq=100)
    assert train_main(["-opt", str(opt)]) == 0
    models = tmp_path / "experiments" / "VmambaIR_derain_tiny" / "models"
    path = models / "net_g_latest.safetensors"
    _, m = read_weights(path)
    assert (m["experiment"], m["iteration"], m["source"], m["task"]) == ("VmambaIR_derain_tiny", "2", "training", "derain")
    assert json.loads(m["network_g"]) == TINY_NET
    # load_model takes the EMA entry of the file (training writes params.* and params_ema.*)
    ema = tiny(0)
    ema.load_state_dict(torch.load(models / "net_g_latest.pth", weights_only=True)["params_ema"])
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(load_model(path)(x), ema.eval()(x))
        plain = load_model(path, key="params")
        assert not torch.equal(plain(x), ema(x))
