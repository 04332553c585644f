"""The profiler helpers: kernel buckets and the table of ops behind copy kernels."""
import torch
from torch.profiler import ProfilerActivity, profile

from vmambair.engine.profiling import copy_sources, kernel_category, stack_profiler_options


def _transpose_copy(x):
    return x.t().contiguous()


def test_copy_sources_names_the_op_its_shapes_and_the_calling_line():
    x = torch.randn(128, 96)
    with profile(activities=[ProfilerActivity.CPU], **stack_profiler_options()) as prof:
        _transpose_copy(x)
    table = copy_sources(prof, iters=1, cpu_time=True)
    row = next(line for line in table.splitlines() if line.startswith("| `aten::copy_`"))
    assert "[96, 128]" in row  # the copy's destination, transposed
    assert "_transpose_copy" in row and "test_profiling.py" in row
    assert "0x" not in row  # object addresses are dropped, so equal calls group together


def test_copy_sources_is_empty_without_copies():
    x = torch.randn(64)
    with profile(activities=[ProfilerActivity.CPU], **stack_profiler_options()) as prof:
        x.exp()
    assert copy_sources(prof, iters=1, cpu_time=True) == ""


def test_kernel_category_buckets():
    assert kernel_category("void vss::fwd_kernel<float, true, false, 16>(vss::ScanParams)") == "scan"
    assert kernel_category("triton_red_fused_native_layer_norm_0") == "norm"
    assert kernel_category("void at::native::elementwise_kernel<direct_copy_kernel_cuda>") == "copy/layout"
