"""The profiler helpers: kernel buckets, the table of ops behind copy kernels, the allocations at the
memory peak."""
import torch
from torch.profiler import ProfilerActivity, profile

from vmambair.engine.profiling import copy_sources, kernel_category, peak_allocations, stack_profiler_options


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


def _alloc(addr, size, file, line):
    return {"action": "alloc", "addr": addr, "size": size,
            "frames": [{"filename": "/x/site-packages/torch/nn/functional.py", "line": 1, "name": "conv2d"},
                       {"filename": f"/repo/vmambair/{file}", "line": line, "name": "forward"}]}


def _free(addr, size):
    return [{"action": "free_requested", "addr": addr, "size": size},
            {"action": "free_completed", "addr": addr, "size": size}]


def test_peak_allocations_finds_the_moment_of_most_bytes_and_who_held_them():
    # a: 100 (arch.py:10), b: 300 (arch.py:20), a freed, c and d: 50 + 70 (ops.py:5): 420 alive; all
    # freed, then e: 400 alone (less than the 420 before)
    events = [_alloc(1, 100, "arch.py", 10), _alloc(2, 300, "arch.py", 20), *_free(1, 100),
              _alloc(3, 50, "ops.py", 5), _alloc(4, 70, "ops.py", 5), *_free(2, 300), *_free(3, 50),
              *_free(4, 70), _alloc(5, 400, "tail.py", 1)]
    peak, rows = peak_allocations(events)
    assert peak == 420                     # b + c + d, after a was freed
    assert rows == [(300, 1, "arch.py:20 forward"), (120, 2, "ops.py:5 forward")]  # torch's frame skipped


def test_peak_allocations_counts_until_the_free_completes():
    # a free that is only requested (the block still in use by another stream) still counts
    events = [_alloc(1, 100, "a.py", 1), {"action": "free_requested", "addr": 1, "size": 100},
              _alloc(2, 100, "a.py", 2)]
    peak, rows = peak_allocations(events, top=1)
    assert peak == 200 and rows == [(100, 1, "a.py:2 forward")]
