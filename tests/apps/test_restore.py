"""scripts/restore.py: odd sizes, grayscale, RGBA, 16-bit, a corrupt file among good ones,
devices/precisions, tiled == untiled for a local network, and refused unsafe weights.

Exactness checks use ``identity_init: true`` networks, which return their input (nearest-
upsampled for SR) whatever the rest of the weights: the expected outputs then follow from the
inputs alone, not from the code under test."""
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
import yaml

import vmambair  # noqa: F401
from vmambair.archs import VmambaIR
from vmambair.engine.checkpoint import save_network
from vmambair.engine.inference import restore_image
from vmambair.apps.restore import restore_main

from tests.helpers import ROOT, TINY_NET, one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def make_model(tmp_path, scale=1, identity=True, name="net"):
    """A tiny options file + weights; returns (options path, weights path)."""
    spec = dict(TINY_NET, scale=scale, identity_init=identity)
    torch.manual_seed(0)
    net = VmambaIR(**{k: v for k, v in spec.items() if k != "type"})
    if not identity:  # make the network do something visible
        torch.nn.init.normal_(net.tail.weight if scale == 1 else net.tail[-1].weight, std=0.05)
    weights = tmp_path / f"{name}.pth"
    save_network(net, weights, safetensors=True)
    opt = {"name": name, "scale": scale, "num_gpu": 0, "network_g": spec, "val": {"pad_multiple": 8}}
    opt_path = tmp_path / f"{name}.yml"
    opt_path.write_text(yaml.safe_dump(opt))
    return opt_path, weights


def run(inp, out, opt, weights, *extra):
    return restore_main(["-i", str(inp), "-o", str(out), "-opt", str(opt), "--weights", str(weights),
                         "--device", "cpu", *extra])


def test_odd_size_gray_rgba_16bit_roundtrip_exactly(tmp_path):
    opt, weights = make_model(tmp_path)
    rng = np.random.default_rng(0)
    src = tmp_path / "in"
    src.mkdir()
    images = {
        "odd.png": rng.integers(0, 256, (7, 513, 3), dtype=np.uint8),
        "gray.png": rng.integers(0, 256, (33, 20), dtype=np.uint8),
        "rgba.png": rng.integers(0, 256, (19, 26, 4), dtype=np.uint8),
        # 16-bit values that are not multiples of 257 would not survive an 8-bit detour.
        "deep.png": rng.integers(0, 65536, (24, 31, 3), dtype=np.uint16),
        "deep_gray.tif": rng.integers(0, 65536, (9, 14), dtype=np.uint16),
    }
    for name, img in images.items():
        assert cv2.imwrite(str(src / name), img)
    out = tmp_path / "out"
    assert run(src, out, opt, weights, "--tile", "16", "--tile-overlap", "8") == 0
    for name, img in images.items():
        got = cv2.imread(str(out / (name.rsplit(".", 1)[0] + ".png")), cv2.IMREAD_UNCHANGED)
        assert got.dtype == img.dtype and got.shape == img.shape, name
        assert np.array_equal(got, img), name
    assert sorted(p.name for p in out.iterdir()) == sorted(n.rsplit(".", 1)[0] + ".png" for n in images)


def test_sr_rgba_alpha_upscaled_and_reattached(tmp_path):
    opt, weights = make_model(tmp_path, scale=2, name="sr")
    rng = np.random.default_rng(1)
    img = rng.integers(0, 65536, (11, 13, 4), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "a.png"), img)
    assert run(tmp_path / "a.png", tmp_path / "out", opt, weights.with_suffix(".safetensors"), "--tile", "0") == 0
    got = cv2.imread(str(tmp_path / "out" / "a.png"), cv2.IMREAD_UNCHANGED)
    assert got.shape == (22, 26, 4) and got.dtype == np.uint16
    # Colour: the identity-initialised SR network is a nearest-neighbour upscaler.
    assert np.array_equal(got[..., :3], img[..., :3].repeat(2, 0).repeat(2, 1))
    # Alpha: restored separately (bicubic), not through the colour network.
    alpha = cv2.resize(img[..., 3].astype(np.float32) / 65535, (26, 22), interpolation=cv2.INTER_CUBIC)
    expected = np.round(np.clip(alpha, 0, 1) * 65535)
    assert np.abs(got[..., 3].astype(np.float64) - expected).max() <= 1


def test_corrupt_file_among_good_ones(tmp_path, capsys):
    opt, weights = make_model(tmp_path, identity=False)
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(2)
    cv2.imwrite(str(src / "a.png"), rng.integers(0, 256, (20, 24, 3), dtype=np.uint8))
    cv2.imwrite(str(src / "c.jpg"), rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    (src / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    (src / "empty.png").write_bytes(b"")
    (src / "notes.txt").write_text("not an image, not listed")
    out = tmp_path / "out"
    assert run(src, out, opt, weights) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 2
    assert any("b.png" in e and "corrupt" in e for e in errors) and any("empty.png" in e for e in errors)
    assert "Restored 2/4" in err
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "c.png"]  # no partial or temp files
    # A network that changes the image (the test can tell restore from copy).
    assert not np.array_equal(cv2.imread(str(out / "a.png")), cv2.imread(str(src / "a.png")))


def test_usage_errors_exit_2(tmp_path, capsys):
    opt, weights = make_model(tmp_path)
    img = tmp_path / "x.png"
    cv2.imwrite(str(img), np.zeros((8, 8, 3), np.uint8))
    assert run(img, tmp_path / "o", opt, tmp_path / "missing.pth") == 2
    assert "missing.pth" in capsys.readouterr().err
    assert run(tmp_path / "nope", tmp_path / "o", opt, weights) == 2
    assert "does not exist" in capsys.readouterr().err
    assert run(img, tmp_path / "o", opt, weights, "--precision", "fp16") == 2
    assert "needs a GPU" in capsys.readouterr().err
    assert run(img, tmp_path / "o", opt, weights, "--compile") == 2
    assert "--compile needs a CUDA device" in capsys.readouterr().err
    assert run(img, tmp_path / "o", opt, weights, "--cuda-graphs") == 2
    assert "--cuda-graphs needs a CUDA device" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert restore_main(["-i", str(img), "-o", str(tmp_path / "o"), "-opt", str(opt), "--weights", str(weights),
                             "--device", "cuda"]) == 2
        assert "no CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


class PickledThing:
    """Any class: torch.save pickles it, and weights_only loading must refuse it."""

    def __init__(self):
        self.lr = 1e-3


def test_unsafe_checkpoint_refused(tmp_path, capsys):
    opt, weights = make_model(tmp_path)
    sd = torch.load(weights, weights_only=True)
    sd["args"] = PickledThing()
    unsafe = tmp_path / "unsafe.pth"
    torch.save(sd, unsafe)
    img = tmp_path / "x.png"
    cv2.imwrite(str(img), np.zeros((8, 8, 3), np.uint8))
    assert run(img, tmp_path / "o", opt, unsafe) == 2
    err = capsys.readouterr().err
    assert "unsafe.pth" in err and "pickled Python objects" in err and "weights_only=True" in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def local_net():
    """A small conv UNet with random weights whose outputs depend on a few pixels around each
    pixel only (receptive radius < 8), downsampling by 2 like VmambaIR's encoder."""
    torch.manual_seed(3)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.PixelUnshuffle(2), torch.nn.Conv2d(32, 32, 3, padding=1),
        torch.nn.GELU(), torch.nn.PixelShuffle(2), torch.nn.Conv2d(8, 3, 3, padding=1)).eval()


@pytest.mark.parametrize("shape", [(7, 513), (100, 130), (64, 200)])
def test_tiled_equals_untiled_for_a_local_network(shape):
    net = local_net()
    img = torch.rand(1, 3, *shape, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        whole = restore_image(net, img, multiple=8)
        tiled = restore_image(net, img, tile=64, overlap=32, multiple=8)
        unblended = restore_image(net, img, tile=64, overlap=0, multiple=8)
    assert tiled.shape == whole.shape == (1, 3, *shape)
    assert (tiled - whole).abs().max() < 1e-4
    # Without overlap the tile seams show: the comparison above can fail.
    assert (unblended - whole).abs().max() > 1e-3


def test_cli_script_and_exported_weights(tmp_path):
    """The thin script itself, with weights exported by scripts/export.py."""
    opt, weights = make_model(tmp_path, identity=False)
    exported = tmp_path / "exported.safetensors"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "export.py"), str(weights), "-o", str(exported),
                        "-opt", str(opt)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    img = np.random.default_rng(5).integers(0, 256, (21, 17, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "x.png"), img)
    outs = {}
    for w in (weights, exported):
        out = tmp_path / f"out_{w.suffix[1:]}"
        r = subprocess.run([sys.executable, str(ROOT / "scripts" / "restore.py"), "-i", str(tmp_path / "x.png"),
                            "-o", str(out), "-opt", str(opt), "--weights", str(w), "--device", "cpu"],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        outs[w.suffix] = cv2.imread(str(out / "x.png"))
    assert outs[".pth"].shape == img.shape and np.array_equal(outs[".pth"], outs[".safetensors"])


def test_auto_tiles_only_when_the_memory_cap_requires_it(tmp_path, capsys):
    opt, weights = make_model(tmp_path)  # identity network: any tiling returns the input exactly
    src = tmp_path / "in"
    src.mkdir()
    img = np.random.default_rng(3).integers(0, 256, (40, 72, 3), dtype=np.uint8)
    cv2.imwrite(str(src / "photo.png"), img)
    assert run(src, tmp_path / "whole", opt, weights) == 0  # default --tile auto, plenty of memory
    assert "tiles of" not in capsys.readouterr().err
    assert np.array_equal(cv2.imread(str(tmp_path / "whole" / "photo.png")), img)
    # A cap below what the process already holds leaves no room: the smallest tiles, with a note.
    assert run(src, tmp_path / "tiled", opt, weights, "--max-memory", "0.001", "--tile-overlap", "8") == 0
    err = capsys.readouterr().err
    assert "photo.png (72x40)" in err and "tiles of 16px" in err and "differs slightly" in err
    assert np.array_equal(cv2.imread(str(tmp_path / "tiled" / "photo.png")), img)
    for bad in (["--tile", "big"], ["--tile", "-3"]):
        with pytest.raises(SystemExit) as info:
            run(src, tmp_path / "x", opt, weights, *bad)
        assert info.value.code == 2
    assert run(src, tmp_path / "x", opt, weights, "--max-memory", "0") == 2
