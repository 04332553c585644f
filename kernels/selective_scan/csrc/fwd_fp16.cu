// Forward kernels for __half inputs (one file per dtype so that builds compile in parallel).
#include "scan_fwd.cuh"

namespace vss {
template void launch_fwd<__half>(const ScanParams& p, bool omni, cudaStream_t stream);
template PassOccupancy fwd_occupancy<__half>(bool omni, int N);
}  // namespace vss
