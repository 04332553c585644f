// Backward kernels for float inputs (one file per dtype so that builds compile in parallel).
#include "scan_bwd.cuh"

namespace vss {
template void launch_bwd<float>(const ScanParams& p, bool omni, cudaStream_t stream);
template PassOccupancy bwd_occupancy<float>(bool omni, int N);
}  // namespace vss
