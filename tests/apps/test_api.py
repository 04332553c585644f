"""The Python API: vmambair.load_model + vmambair.restore give exactly what scripts/restore.py writes,
and keep an image's type and channels."""
import cv2
import numpy as np
import pytest
import torch

import vmambair
from vmambair.apps.restore import restore_main
from vmambair.archs import VmambaIR
from vmambair.engine.portable import save_weights, weights_metadata

from tests.helpers import TINY_NET, one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_weights(tmp_path, **over):
    spec = dict(TINY_NET, **over)
    torch.manual_seed(3)
    net = VmambaIR(**{k: v for k, v in spec.items() if k != "type"})
    return save_weights(net.state_dict(), tmp_path / "net.safetensors",
                        weights_metadata(spec, scale=spec["scale"], task="derain", source="test"))


def photo(h, w, channels, dtype, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([0.5 + 0.4 * np.sin(xx / (7 + c) + yy / 11) for c in range(max(channels, 1))], -1)
    img = np.clip(base + rng.normal(0, 0.05, base.shape), 0, 1)
    img = img[..., 0] if channels == 0 else img
    peak = 255 if dtype == np.uint8 else 65535
    return np.round(img * peak).astype(dtype)


@pytest.mark.parametrize("size,tile", [(512, "0"), (200, "96")])
def test_api_equals_restore_script_bit_exact(tmp_path, size, tile):
    """uint8 (512x512 whole, 200x200 in tiles): the API's array is the PNG restore.py writes, to the bit."""
    weights = tiny_weights(tmp_path)
    img = photo(size, size, 3, np.uint8)
    src = tmp_path / "in" / "photo.png"
    src.parent.mkdir()
    cv2.imwrite(str(src), img)
    assert restore_main(["-i", str(src), "-o", str(tmp_path / "out"), "--weights", str(weights),
                         "--device", "cpu", "--tile", tile]) == 0
    by_script = cv2.imread(str(tmp_path / "out" / "photo.png"), cv2.IMREAD_UNCHANGED)

    model = vmambair.load_model(weights)
    by_api = vmambair.restore(model, cv2.imread(str(src), cv2.IMREAD_UNCHANGED), tile=int(tile))
    assert by_api.dtype == np.uint8 and by_api.shape == (size, size, 3)
    assert np.array_equal(by_api, by_script)
    assert not np.array_equal(by_api, img)  # the network did something


def test_api_keeps_type_and_channels(tmp_path):
    model = vmambair.load_model(tiny_weights(tmp_path, scale=2))
    for channels, dtype in ((0, np.uint16), (4, np.uint8), (3, np.uint16)):
        img = photo(24, 40, channels, dtype, seed=channels)
        out = vmambair.restore(model, img, tile=0)
        assert out.dtype == dtype
        assert out.shape == (48, 80) + ((channels,) if channels else ())
    f = vmambair.restore(model, photo(24, 40, 3, np.uint8).astype(np.float32) / 255, tile=0)
    assert f.dtype == np.float32 and f.shape == (48, 80, 3) and 0 <= f.min() and f.max() <= 1
    with pytest.raises(ValueError, match="shape"):
        vmambair.restore(model, np.zeros((4, 4, 2), np.uint8))
