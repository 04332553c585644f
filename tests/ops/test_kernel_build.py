"""CI guard: the CUDA extension in kernels/selective_scan compiles (no GPU needed, only nvcc).

Builds with the real setup.py (CUDA discovery included) for one architecture (sm_90) to stay
within a few minutes on a 2-core runner, then imports the result in a fresh process and checks
that the custom ops are registered. Skipped when there is no CUDA toolkit or torch has no CUDA.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

KERNEL_DIR = Path(__file__).resolve().parents[2] / "kernels" / "selective_scan"
sys.path.insert(0, str(KERNEL_DIR))
import build_config  # noqa: E402

sys.path.remove(str(KERNEL_DIR))


def _toolkit_or_skip():
    if torch.version.cuda is None:
        pytest.skip("PyTorch is a CPU-only build")
    try:
        home = build_config.find_cuda_home()
        build_config.check_torch_matches(home)
    except build_config.BuildError as e:
        pytest.skip(f"no usable CUDA toolkit: {e}")
    return home


def test_extension_compiles_and_registers_ops(tmp_path):
    _toolkit_or_skip()
    env = dict(os.environ, TORCH_CUDA_ARCH_LIST=os.environ.get("VMAMBAIR_BUILD_TEST_ARCH", "9.0"),
               MAX_JOBS=os.environ.get("MAX_JOBS", str(os.cpu_count() or 2)))
    env.pop("CUDA_HOME", None)  # exercise setup.py's own discovery
    build_lib, build_tmp = tmp_path / "lib", tmp_path / "tmp"
    proc = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--build-lib", str(build_lib), "--build-temp", str(build_tmp)],
        cwd=KERNEL_DIR, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, f"extension build failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    # build_ext leaves only _C in build_lib: add the package's Python files next to it.
    for src in (KERNEL_DIR / "vmambair_scan_cuda").glob("*.py"):
        shutil.copy(src, build_lib / "vmambair_scan_cuda" / src.name)
    check = ("import torch, vmambair_scan_cuda as m; "
             "ops = [getattr(torch.ops.vmambair_scan, n) for n in ('scan_fwd', 'scan_bwd', 'omni_fwd', 'omni_bwd')]; "
             "print('ok', m.CHUNK, m.MAX_N)")
    env_run = dict(os.environ, PYTHONPATH=str(build_lib))
    out = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, env=env_run, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-4000:]


def test_missing_toolkit_is_reported(monkeypatch, tmp_path):
    """With no nvcc anywhere, the failure names the cause instead of a linker error."""
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "nope"))
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(build_config.glob, "glob", lambda pattern: [])
    monkeypatch.setattr(build_config, "_is_toolkit", lambda root: False)
    with pytest.raises(build_config.BuildError, match="No CUDA toolkit"):
        build_config.find_cuda_home()
