"""Padding an image batch to the multiple a UNet needs (shared by the network and by inference)."""
import torch
import torch.nn.functional as F


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad (b, c, H, W) on the bottom/right to multiples of ``multiple``: (b, c, H', W').

    Reflection where the image is large enough (it needs pad < size), else edge replication.
    """
    H, W = x.shape[-2:]
    if torch.jit.is_tracing():
        # Traced for export (ONNX): pad amounts would be frozen to the example input's, so pad by
        # the most ever needed and crop to the traced rounded-up size. The same values for
        # H, W >= multiple (reflection), the sizes an exported network accepts.
        Hp, Wp = (H + multiple - 1) // multiple * multiple, (W + multiple - 1) // multiple * multiple
        return F.pad(x, (0, multiple - 1, 0, multiple - 1), mode="reflect")[..., :Hp, :Wp]
    ph, pw = (-H) % multiple, (-W) % multiple
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < H and pw < W else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)
