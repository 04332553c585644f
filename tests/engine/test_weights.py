"""Weights: export to safetensors, every loader reads .safetensors and weights_only .pth, and a
checkpoint that needs arbitrary unpickling is refused with a clear message."""
import pytest
import torch
import yaml
from safetensors.torch import load_file, safe_open

import vmambair  # noqa: F401
from vmambair.archs import VmambaIR
from vmambair.engine.checkpoint import CheckpointError, load_into_network, load_network_weights, save_network
from vmambair.apps.export import export_main, export_safetensors

from tests.helpers import TINY_NET, one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(seed):
    torch.manual_seed(seed)
    return VmambaIR(**{k: v for k, v in TINY_NET.items() if k != "type"})


def test_export_roundtrip_and_key(tmp_path):
    net, ema = tiny(0), tiny(1)
    src = tmp_path / "net_g.pth"
    save_network({"params": net, "params_ema": ema}, src)
    out = export_safetensors(src, key="params_ema", network_g=TINY_NET)
    assert out == tmp_path / "net_g.safetensors"
    flat = load_file(str(out))
    assert set(flat) == set(ema.state_dict())
    for k, v in ema.state_dict().items():
        assert torch.equal(flat[k], v)
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert (meta["format"], meta["source"], meta["key"]) == ("vmambair", "net_g.pth", "params_ema")
    # Loading the export into a fresh network reproduces the EMA network's outputs.
    fresh = tiny(2)
    load_into_network(fresh, out)
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(fresh(x), ema(x))


def test_export_checks_network_and_refuses_overwrite(tmp_path, capsys):
    src = tmp_path / "w.pth"
    save_network(tiny(0), src)
    opt = tmp_path / "o.yml"
    opt.write_text(yaml.safe_dump({"name": "x", "network_g": dict(TINY_NET, dim=16)}))
    assert export_main([str(src), "-opt", str(opt)]) == 2
    assert "do not match" in capsys.readouterr().err
    assert not (tmp_path / "w.safetensors").exists()
    assert export_main([str(src), "-o", str(src)]) == 2
    assert "is the source file" in capsys.readouterr().err


class Namespace:
    """Stands for e.g. argparse.Namespace pickled into old checkpoints."""


def test_pickled_objects_refused_everywhere(tmp_path, capsys):
    sd = {"params": tiny(0).state_dict(), "opt": Namespace()}
    bad = tmp_path / "old.pth"
    torch.save(sd, bad)
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        load_network_weights(bad)
    assert export_main([str(bad)]) == 2
    err = capsys.readouterr().err
    assert "old.pth" in err and "weights_only=True" in err
    assert not (tmp_path / "old.safetensors").exists()
    # The same weights without the pickled object load fine from .pth and .safetensors.
    good = tmp_path / "good.pth"
    torch.save({"params": sd["params"]}, good)
    export_safetensors(good, network_g=TINY_NET)
    for path in (good, tmp_path / "good.safetensors"):
        state = load_network_weights(path)
        assert all(torch.equal(state[k], v) for k, v in sd["params"].items())
