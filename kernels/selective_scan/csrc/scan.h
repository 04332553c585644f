// Selective scan for VmambaIR: shared declarations of the CUDA kernels and their launchers.
//
// Recurrence (per channel c, state n, diagonal A):
//   dt_t = softplus(delta_t + bias_c) (or delta_t + bias_c)
//   h_t  = exp(dt_t * A[c,n]) * h_{t-1} + dt_t * B[g,n,t] * u_t        (g = group of c)
//   y_t  = sum_n C[g,n,t] * h_t + D[c] * u_t
//
// Work decomposition (see scan_fwd.cuh / scan_bwd.cuh):
//   * a chunk is kChunk = 32 * kK consecutive positions; inside a chunk, lane l of a warp
//     owns positions [l*kK, l*kK + kK) and scans them sequentially, and a warp-wide
//     Kogge-Stone scan of the lanes' affine maps (h -> P*h + X) joins the lanes;
//   * one warp is one channel; a block is kWarps channels of the SAME group, so the
//     block stages that group's B/C chunk in shared memory once for all its warps and
//     reduces dB/dC over its warps before touching global memory;
//   * a warp walks the chunks of one "segment" of the sequence, carrying the state per n
//     from chunk to chunk. When (batch x channels) alone cannot fill the GPU, the sequence
//     is cut into several segments: a summary pass computes each segment's affine map,
//     a tiny combine kernel chains them, and the main pass starts every segment from its
//     exact incoming state. Any length works; nothing is truncated.
//   * the forward saves the state at every chunk start (fp32, (b, dim, nchunks, N)), so the
//     backward recomputes states chunk by chunk instead of storing them all.
#pragma once

#include <cuda_runtime.h>
#include <cstdint>

namespace vss {

constexpr int kK = 8;                  // consecutive positions per lane
constexpr int kWarps = 8;              // channels per block, one per warp
constexpr int kThreads = kWarps * 32;
constexpr int kChunk = 32 * kK;        // positions per chunk
constexpr int kMaxN = 16;              // largest state size

static_assert(kChunk == kThreads, "B/C staging maps the threads one-to-one onto chunk positions");

struct ScanParams {
    // geometry
    int batch = 0;
    int dim = 0;      // scan channels (plain: d; omni: 4*d, direction-major)
    int L = 0;        // sequence length (omni: H*W)
    int N = 0;        // state size
    int G = 1;        // groups of B/C (omni: 4, one per direction)
    int cpg = 0;      // channels per group = dim / G (omni: d)
    int bpg = 0;      // blocks per group = ceil(cpg / kWarps)
    int nchunks = 0;  // ceil(L / kChunk)
    int nseg = 1;     // segments per channel
    int cps = 0;      // chunks per segment
    int H = 0, W = 0; // omni only
    bool softplus = false;
    bool vec = false; // L % kK == 0 and 16-byte aligned rows: a lane's kK positions may use vector accesses
    // Omni only, "transposed columns": the column directions (g = 1, 3) read the transposed map
    // (W x H, row-major) and so scan it like the row directions (g & 2: reversed), with vector
    // accesses instead of gathers W apart. Their delta / B / C (and ddelta / dB / dC) are then
    // the separate column-only tensors deltaT / BT / CT (ddeltaT / dBT / dCT) below, direction
    // g in slot g >> 1, and their x / y / dy / du the transposed tensors uT / yT / dyT / duT
    // (ops.cpp, kernel_inputs). The row directions use delta / B / C as given.
    bool colT = false;
    // Omni, colT, "mixed" columns: the column directions write y / du / ddelta straight into the
    // image layout (y, du, ddelta), staged through shared memory 4 pixels of an image row at a time
    // (stage_columns_out), instead of into yT / duT / ddeltaT that a transpose then puts back. Only
    // where column_quads(H, W) holds.
    bool col_out_staged = false;
    // Omni, 16-bit inputs, col_out_staged, sm_90+: the y (forward) and du (backward) accumulators
    // have the inputs' dtype T and the directions add into them with bf16x2 / f16x2 reductions, so
    // no fp32 buffer needs a cast pass afterwards. Four roundings of a pixel's sum instead of one
    // (the unfused path rounds each direction's output and then each partial sum: seven).
    bool acc16 = false;
    // Forward summary pass: stop once exp2(A * log2(e) * dt summed) is below 2^summary_cutoff for
    // every state (exactly 0 in fp32; see fwd_body). -INFINITY never stops (for timing the difference).
    float summary_cutoff = -160.f;

    // inputs (dtype T unless float)
    const void* u = nullptr;      // plain (b, dim, L); omni x (b, d, L)
    const void* delta = nullptr;  // (b, dim, L) (omni: (b, 4, d, H, W) is the same memory)
    const void* B = nullptr;      // (b, G, N, L)
    const void* C = nullptr;      // (b, G, N, L)
    const float* A = nullptr;     // (dim, N)
    const float* D = nullptr;     // (dim,) or null
    const float* bias = nullptr;  // (dim,) or null

    const void* uT = nullptr;     // omni, colT: x transposed, (b, d, W, H)
    const void* deltaT = nullptr; // omni, colT: delta of directions 1, 3 transposed, (b, 2, d, W, H)
    const void* BT = nullptr;     // omni, colT: B of directions 1, 3 transposed, (b, 2, N, W, H)
    const void* CT = nullptr;     // omni, colT: the same for C

    // forward outputs / workspaces
    void* y = nullptr;            // plain: T (b, dim, L); omni: accumulator (b, d, L), zeroed: float (acc16: T)
    void* yT = nullptr;           // omni, colT unless col_out_staged: float accumulator (b, d, W, H) of the column directions, zeroed
    float* states = nullptr;      // (b, dim, nchunks, N): state before each chunk's first position
    float* seg_S = nullptr;       // (b, dim, nseg): sum of dt over each segment
    float* seg_H = nullptr;       // (b, dim, nseg, N): segment summary (zero incoming state)
    float* seg_carry = nullptr;   // (b, dim, nseg, N): exact incoming carry of each segment

    // backward
    const void* dy = nullptr;     // plain T (b, dim, L); omni T (b, d, L)
    void* du = nullptr;           // plain T (b, dim, L); omni accumulator (b, d, L), zeroed: float (acc16: T)
    const void* dyT = nullptr;    // omni, colT: dy transposed, (b, d, W, H)
    void* duT = nullptr;          // omni, colT unless col_out_staged: float accumulator (b, d, W, H), zeroed
    void* ddelta = nullptr;       // T, delta's layout
    void* ddeltaT = nullptr;      // omni, colT unless col_out_staged: T, deltaT's layout
    float* dBT = nullptr;         // omni, colT: BT's layout, zeroed
    float* dCT = nullptr;         // omni, colT: CT's layout, zeroed
    float* dA = nullptr;          // (dim, N), zeroed
    float* dB = nullptr;          // (b, G, N, L) float, zeroed
    float* dC = nullptr;          // (b, G, N, L) float, zeroed
    float* dD = nullptr;          // (dim,) zeroed, or null
    float* dbias = nullptr;       // (dim,) zeroed, or null
};

// Can direction g of an H-row map stage its chunks row by row (a chunk is whole columns: H divides
// kChunk)? Column directions only; see stage_slot (scan_common.cuh).
__host__ __device__ inline bool column_staged(int g, int H) { return (g & 1) && H <= kChunk && kChunk % H == 0; }

// Can a column direction's chunks go out into the image layout 4 pixels of an image row at a time
// (stage_columns_out's 16-byte path)? Its kChunk / H whole columns must come in groups of 4 (H
// divides kChunk / 4) and image rows must be whole groups (W % 4 == 0). Mixed columns
// (ScanParams::col_out_staged) are used only then: one pixel per access was slower than
// transposed outputs (H100, deraining 256x256, whose first levels have H = 256 and 128).
__host__ __device__ inline bool column_quads(int H, int W) {
    return H <= kChunk / 4 && (kChunk / 4) % H == 0 && W % 4 == 0;
}

// T in {float, __nv_bfloat16, __half}; defined in fwd_*.cu / bwd_*.cu.
template <typename T> void launch_fwd(const ScanParams& p, bool omni, cudaStream_t stream);
template <typename T> void launch_bwd(const ScanParams& p, bool omni, cudaStream_t stream);

// How many blocks of a pass's main and summary kernels one SM holds at once (CUDA occupancy API,
// on the current device; cached): the segment count is chosen from these (ops.cpp, pick_nseg).
struct PassOccupancy {
    int main = 1;
    int summary = 1;
};
template <typename T> PassOccupancy fwd_occupancy(bool omni, int N);
template <typename T> PassOccupancy bwd_occupancy(bool omni, int N);

// Batched transposes of planes (transpose.cu). A job transposes `planes` planes in groups of
// `inner`: plane p = (o, i) with i = p % inner sits at element offset off0 + o * outer + i * R * S
// of its tensor. Each src plane is R x S (row-major); its dst plane is S x R with dst[s][r] =
// src[r][s] (+ add[s][r] when add is given, an fp32 tensor laid out like dst). TS / TD: float, or
// both the scan's dtype, or float -> dtype. Up to kMaxTransposeJobs jobs of the same plane size
// run in one launch (fewer small launches, each with its ramp-up and tail).
struct Planes {
    int64_t off0 = 0;
    int64_t outer = 0;
};
template <typename TS, typename TD>
struct TransposeJob {
    const TS* src = nullptr;
    Planes sp;
    TD* dst = nullptr;
    Planes dp;
    const float* add = nullptr;
    Planes ap;
    int64_t planes = 0, inner = 1;
};
constexpr int kMaxTransposeJobs = 4;
template <typename TS, typename TD>
struct TransposeJobs {
    TransposeJob<TS, TD> job[kMaxTransposeJobs];
    int count = 0;
    int R = 0, S = 0;  // the planes of every job are R x S
};
template <typename TS, typename TD>
void launch_transposes(const TransposeJobs<TS, TD>& jobs, cudaStream_t stream);

// Chains segment summaries into exact incoming carries (combine.cu).
//   forward:  carry[0] = 0,        carry[s] = exp(A*S[s-1]) * carry[s-1] + H[s-1]
//   backward: carry[nseg-1] = 0,   carry[s] = exp(A*S[s+1]) * carry[s+1] + H[s+1]
void launch_combine(const float* seg_S, const float* seg_H, const float* A, float* carry,
                    int rows, int dim, int N, int nseg, bool reverse, cudaStream_t stream);

}  // namespace vss
