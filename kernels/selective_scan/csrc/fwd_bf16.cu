// Forward kernels for __nv_bfloat16 inputs (one file per dtype so that builds compile in parallel).
#include "scan_fwd.cuh"

namespace vss {
template void launch_fwd<__nv_bfloat16>(const ScanParams& p, bool omni, cudaStream_t stream);
template PassOccupancy fwd_occupancy<__nv_bfloat16>(bool omni, int N);
}  // namespace vss
