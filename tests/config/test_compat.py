"""basicsr 1.4.2 imports under current torchvision once vmambair is imported first."""
import subprocess
import sys

import torchvision


def _run(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_import_vmambair_makes_basicsr_importable():
    out = _run("import vmambair, basicsr; from basicsr.data import degradations; "
               "from basicsr.archs.discriminator_arch import UNetDiscriminatorSN; print('ok', basicsr.__version__)")
    assert out.returncode == 0, out.stderr
    assert "ok 1.4.2" in out.stdout


def test_shim_is_needed_on_this_torchvision():
    """Without the shim basicsr fails on torchvision >= 0.17 (where functional_tensor was removed)."""
    major, minor = (int(x) for x in torchvision.__version__.split(".")[:2])
    out = _run("import basicsr")
    if (major, minor) >= (0, 17):
        assert out.returncode != 0 and "functional_tensor" in out.stderr
    else:
        assert out.returncode == 0, out.stderr
