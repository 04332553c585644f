// Forward kernels for float inputs (one file per dtype so that builds compile in parallel).
#include "scan_fwd.cuh"

namespace vss {
template void launch_fwd<float>(const ScanParams& p, bool omni, cudaStream_t stream);
template PassOccupancy fwd_occupancy<float>(bool omni, int N);
}  // namespace vss
