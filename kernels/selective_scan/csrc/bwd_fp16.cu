// Backward kernels for __half inputs (one file per dtype so that builds compile in parallel).
#include "scan_bwd.cuh"

namespace vss {
template void launch_bwd<__half>(const ScanParams& p, bool omni, cudaStream_t stream);
template PassOccupancy bwd_occupancy<__half>(bool omni, int N);
}  // namespace vss
