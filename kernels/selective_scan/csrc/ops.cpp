// Host side: argument checks, workspace allocation, launch, and the torch.library schema.
//
// Ops (namespace vmambair_scan), all CUDA-only; fake (meta) kernels and autograd formulas are
// registered from Python (vmambair_scan_cuda/ops.py):
//   scan_fwd(u, delta, A, B, C, D?, delta_bias?, softplus, nseg) -> (y, states)
//   scan_bwd(dy, u, delta, A, B, C, D?, delta_bias?, states, softplus, nseg)
//       -> (du, ddelta, dA, dB, dC, dD, ddelta_bias)     (dD / ddelta_bias empty when absent)
//   omni_fwd / omni_bwd: the same for the fused four-direction planar scan, taking
//       x (b, d, H, W), delta (b, 4, d, H, W), A (4d, N), B/C (b, 4, N, H, W), D/bias (4d,)
//       and returning y (b, d, H, W) = the sum of the four directions; omni_fwd(..., keep_columns)
//       also returns the column copies it made (xT, deltaT, BT, CT), which omni_bwd takes back.
// nseg = 0 picks the number of sequence segments automatically (tests force other values).
// (Not ATen/cuda/CUDAContext.h: it pulls in cuBLAS/cuSPARSE headers that minimal toolkits lack.)
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>
#include <torch/library.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdlib>
#include <optional>
#include <string>
#include <tuple>

#include "scan.h"

namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

void check_input(const Tensor& t, const char* name, const Tensor& like) {
    TORCH_CHECK(t.is_cuda(), "vmambair_scan: ", name, " must be a CUDA tensor");
    TORCH_CHECK(t.device() == like.device(), "vmambair_scan: ", name, " is on ", t.device(), " but u is on ", like.device());
    TORCH_CHECK(t.is_contiguous(), "vmambair_scan: ", name, " must be contiguous");
}

void check_param(const OptTensor& t, const char* name, const Tensor& like, int64_t dim) {
    if (!t.has_value()) return;
    check_input(*t, name, like);
    TORCH_CHECK(t->scalar_type() == at::kFloat, "vmambair_scan: ", name, " must be float32");
    TORCH_CHECK(t->dim() == 1 && t->size(0) == dim, "vmambair_scan: ", name, " must have shape (", dim, ",), got ", t->sizes());
}

// Segments per channel for one pass (forward or backward), chosen by a cost model.
// A pass runs `rows` (= batch x channel blocks) x nseg blocks, each walking cps = ceil(nchunks /
// nseg) chunks; an SM holds occ.main of them at once (occ.summary for the summary pass). More
// segments give the GPU more blocks to run side by side, at the price of a summary pass over all
// segments but one and a small combine kernel. Time, in units of one chunk on an SM that runs a
// single block, counted on the busiest SM:
//   pass(blocks, occ) = cps * (full waves * t(occ) + t(blocks in the last, partial wave)),
//   t(k) = 1 + kShare * (k - 1): one chunk's time when k blocks share the SM;
//   total = pass(rows * nseg, occ.main) + kSummary * pass(rows * (nseg - 1), occ.summary) + kCombine.
// The constants are fitted to GPU times of forced segment counts (benchmarks/scan_segments.md in
// git history, scripts/bench/sweep_segments.py, H200); the model's pick is within 1-4 % of the best forced count for
// every plain shape there. Ties go to fewer segments.
//
// The fused op did not fit this model when measured (benchmarks/data/scan_segments_omni.json, column
// directions staged): its column-direction blocks read every position from a different image row
// and took ~3x as long per chunk as its row-direction blocks, so what counted was enough small
// blocks for the scheduler to even out SMs. With fewer blocks than the GPU holds, it gets
// ~kOmniWaves resident-block waves of them (best or within 8 % of best there). Not re-tuned for
// transposed columns, which make the blocks more even.
constexpr double kShare = 0.35;
constexpr double kSummary = 0.5;
constexpr double kCombine = 1.0;
constexpr int64_t kOmniWaves = 6;

double pass_cost(int64_t blocks, int64_t sms, int occ, int64_t cps) {
    if (blocks <= 0) return 0.0;
    const int64_t per_sm = (blocks + sms - 1) / sms;
    const int64_t full = per_sm / occ, rest = per_sm % occ;
    auto t = [](int64_t k) { return k == 0 ? 0.0 : 1.0 + kShare * (double)(k - 1); };
    return (double)cps * ((double)full * t(occ) + t(rest));
}

int pick_nseg(int64_t rows, int nchunks, int64_t requested, const vss::PassOccupancy& occ, bool omni) {
    if (requested > 0) return (int)std::min<int64_t>(requested, nchunks);
    if (nchunks <= 1) return 1;
    int dev = 0, sms = 0;
    C10_CUDA_CHECK(cudaGetDevice(&dev));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    if (omni) {
        const int64_t slots = (int64_t)sms * occ.main;
        if (rows >= slots) return 1;
        return (int)std::min<int64_t>(nchunks, (kOmniWaves * slots + rows - 1) / rows);
    }
    // Beyond ~16 waves of blocks more segments cannot help; this also bounds the search.
    const int64_t most = std::min<int64_t>(nchunks, std::max<int64_t>(1, 16LL * sms * occ.main / rows));
    int best = 1;
    double best_cost = pass_cost(rows, sms, occ.main, nchunks);
    for (int64_t n = 2; n <= most; ++n) {
        const int64_t cps = (nchunks + n - 1) / n;
        const int64_t nseg = (nchunks + cps - 1) / cps;  // no empty segments
        if (nseg != n) continue;                         // the same split as a smaller n
        const double cost = pass_cost(rows * nseg, sms, occ.main, cps) +
                            kSummary * pass_cost(rows * (nseg - 1), sms, occ.summary, cps) + kCombine;
        if (cost < best_cost * 0.98) {
            best_cost = cost;
            best = (int)nseg;
        }
    }
    return best;
}

struct Geometry {
    int64_t batch, dim, L, N, G, H = 0, W = 0, d = 0;
};

// Fills the sizes shared by forward and backward and checks the shapes.
Geometry check_shapes(bool omni, const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B,
                      const Tensor& C) {
    Geometry g{};
    const auto dt = u.scalar_type();
    TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf,
                "vmambair_scan: inputs must be float32, bfloat16 or float16, got ", dt);
    const Tensor* same[] = {&delta, &B, &C};
    const char* names[] = {"delta", "B", "C"};
    for (int i = 0; i < 3; ++i) {
        const Tensor& t = *same[i];
        const char* name = names[i];
        check_input(t, name, u);
        TORCH_CHECK(t.scalar_type() == dt, "vmambair_scan: ", name, " has dtype ", t.scalar_type(),
                    " but u has ", dt, " (cast u, delta, B, C to one dtype)");
    }
    check_input(u, "u", u);
    check_input(A, "A", u);
    TORCH_CHECK(A.scalar_type() == at::kFloat, "vmambair_scan: A must be float32");
    TORCH_CHECK(A.dim() == 2, "vmambair_scan: A must be (channels, N)");
    g.N = A.size(1);
    TORCH_CHECK(g.N >= 1 && g.N <= vss::kMaxN, "vmambair_scan: state size N must be in [1, ", vss::kMaxN, "], got ", g.N);
    if (!omni) {
        TORCH_CHECK(u.dim() == 3, "vmambair_scan: u must be (batch, dim, L), got ", u.sizes());
        g.batch = u.size(0); g.dim = u.size(1); g.L = u.size(2);
        TORCH_CHECK(delta.sizes() == u.sizes(), "vmambair_scan: delta must match u ", u.sizes(), ", got ", delta.sizes());
        TORCH_CHECK(A.size(0) == g.dim, "vmambair_scan: A must be (", g.dim, ", N), got ", A.sizes());
        TORCH_CHECK(B.dim() == 4 && B.size(0) == g.batch && B.size(2) == g.N && B.size(3) == g.L,
                    "vmambair_scan: B must be (batch, G, N, L) = (", g.batch, ", G, ", g.N, ", ", g.L, "), got ", B.sizes());
        g.G = B.size(1);
        TORCH_CHECK(g.G >= 1 && g.dim % g.G == 0, "vmambair_scan: the number of groups G=", g.G, " must divide dim=", g.dim);
    } else {
        TORCH_CHECK(u.dim() == 4, "vmambair_scan: x must be (batch, d, H, W), got ", u.sizes());
        g.batch = u.size(0); g.d = u.size(1); g.H = u.size(2); g.W = u.size(3);
        g.L = g.H * g.W; g.G = 4; g.dim = 4 * g.d;
        TORCH_CHECK(delta.dim() == 5 && delta.size(0) == g.batch && delta.size(1) == 4 && delta.size(2) == g.d &&
                    delta.size(3) == g.H && delta.size(4) == g.W,
                    "vmambair_scan: delta must be (batch, 4, d, H, W), got ", delta.sizes());
        TORCH_CHECK(A.size(0) == g.dim, "vmambair_scan: A must be (4*d=", g.dim, ", N), got ", A.sizes());
        TORCH_CHECK(B.dim() == 5 && B.size(0) == g.batch && B.size(1) == 4 && B.size(2) == g.N && B.size(3) == g.H &&
                    B.size(4) == g.W, "vmambair_scan: B must be (batch, 4, N, H, W), got ", B.sizes());
    }
    TORCH_CHECK(C.sizes() == B.sizes(), "vmambair_scan: C must match B ", B.sizes(), ", got ", C.sizes());
    // Positions are int32 inside the kernels (offsets are int64).
    TORCH_CHECK(g.L <= (int64_t)INT32_MAX - vss::kChunk, "vmambair_scan: sequence length ", g.L, " is too long");
    TORCH_CHECK(g.batch <= 65535, "vmambair_scan: batch must be <= 65535");
    return g;
}

// The forward summary pass's early stop (ScanParams::summary_cutoff): on unless switched off, to
// time what it saves, by VMAMBAIR_SCAN_EARLY_STOP=0 (for a whole process) or set_summary_early_stop.
static bool g_summary_early_stop = [] {
    const char* v = std::getenv("VMAMBAIR_SCAN_EARLY_STOP");
    return !(v && std::string(v) == "0");
}();

vss::ScanParams make_params(bool omni, const Geometry& g, const Tensor& u, const Tensor& delta, const Tensor& A,
                            const Tensor& B, const Tensor& C, const OptTensor& D, const OptTensor& bias,
                            bool softplus) {
    vss::ScanParams p;
    p.batch = (int)g.batch; p.dim = (int)g.dim; p.L = (int)g.L; p.N = (int)g.N; p.G = (int)g.G;
    p.cpg = (int)(g.dim / g.G);
    p.bpg = (p.cpg + vss::kWarps - 1) / vss::kWarps;
    p.nchunks = (int)((g.L + vss::kChunk - 1) / vss::kChunk);
    p.H = (int)g.H; p.W = (int)g.W;
    p.softplus = softplus;
    // exp2 of anything below -150 is 0 in fp32 (the smallest subnormal is 2^-149); 10 more for
    // the rounding of the exponents' sums
    p.summary_cutoff = g_summary_early_stop ? -160.f : -INFINITY;
    p.u = u.data_ptr(); p.delta = delta.data_ptr(); p.B = B.data_ptr(); p.C = C.data_ptr();
    p.A = A.data_ptr<float>();
    p.D = D.has_value() ? D->data_ptr<float>() : nullptr;
    p.bias = bias.has_value() ? bias->data_ptr<float>() : nullptr;
    (void)omni;
    return p;
}

bool aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15) == 0; }

template <typename F>
void dispatch(at::ScalarType t, F&& f) {
    switch (t) {
        case at::kFloat: f(float{}); break;
        case at::kBFloat16: f(__nv_bfloat16{}); break;
        case at::kHalf: f(__half{}); break;
        default: TORCH_CHECK(false, "vmambair_scan: unsupported dtype ", t);
    }
}

// occupancy(dtype tag) -> vss::PassOccupancy of the pass being set up (queried only when needed).
template <typename Occupancy>
void set_segments(vss::ScanParams& p, bool omni, int64_t nseg_req, const Tensor& like, Occupancy&& occupancy,
                  Tensor& seg_S, Tensor& seg_H, Tensor& seg_carry) {
    const int64_t rows = (int64_t)p.batch * p.G * p.bpg;
    vss::PassOccupancy occ;
    if (nseg_req <= 0 && p.nchunks > 1) dispatch(like.scalar_type(), [&](auto tag) { occ = occupancy(tag); });
    p.nseg = pick_nseg(rows, p.nchunks, nseg_req, occ, omni);
    p.cps = (p.nchunks + p.nseg - 1) / p.nseg;
    p.nseg = (p.nchunks + p.cps - 1) / p.cps;  // no empty segments
    TORCH_CHECK(p.nseg <= 2147483647, "vmambair_scan: too many segments");
    if (p.nseg > 1) {
        auto f = like.options().dtype(at::kFloat);
        seg_S = at::empty({p.batch, p.dim, p.nseg}, f);
        seg_H = at::empty({p.batch, p.dim, p.nseg, p.N}, f);
        seg_carry = at::empty({p.batch, p.dim, p.nseg, p.N}, f);
        p.seg_S = seg_S.data_ptr<float>();
        p.seg_H = seg_H.data_ptr<float>();
        p.seg_carry = seg_carry.data_ptr<float>();
    }
}

// ---------------------------------------------------------------- transposed columns (fused op)
// The fused op's column directions read positions W apart in memory. With "transposed columns"
// (ScanParams::colT) they read copies in which their scan order is row-major instead: the map
// transposed (x, dy), and delta / B / C of directions 1 and 3 only, transposed into column-only
// tensors (b, 2, c, W, H); the row directions read delta / B / C as given. The copies are tiled
// transposes (transpose.cu), and the column directions' outputs come back the same way.
// The op argument `columns` picks one of three modes (-1: kDefaultColumns):
//   "transposed"  copies in, and the column directions' y / du / ddelta / dB / dC out into
//                 transposed buffers that transposes merge or put back;
//   "mixed"       copies in, but y / du / ddelta out straight into the image layout, staged
//                 through shared memory 4 pixels of an image row at a time (ScanParams::col_out_staged)
//                 where vss::column_quads(H, W) holds (other maps: as "transposed"); dB / dC as
//                 "transposed";
//   "staged"      no copies: gathers in and staged out, both row by row where H divides the chunk.
// Measured on an H200 at (9, 96, 64x64), fwd + bwd GPU time, before the tiled transposes:
// transposed vs staged fp32 1.281 vs 1.485 ms, bf16 1.317 vs 1.447 ms
// (benchmarks/gpu_scan_fused_transposed.md / _staged.md of that date, in git history).
enum class Columns { kStaged = 0, kTransposed = 1, kMixed = 2 };
constexpr Columns kDefaultColumns = Columns::kMixed;

// The mode comes from the caller (the op's `columns` argument: 0 staged, 1 transposed, 2 mixed,
// -1 the default), so one process can time several modes and nothing reads the environment.
Columns column_mode(int64_t columns) {
    if (columns < 0) return kDefaultColumns;
    TORCH_CHECK(columns <= 2, "vmambair_scan: columns=", columns,
                " is not a column mode; pass 0 (staged), 1 (transposed), 2 (mixed) or -1 (default)");
    return static_cast<Columns>(columns);
}

template <typename T> T* ptr(const Tensor& t) { return reinterpret_cast<T*>(t.data_ptr()); }

// Plane transposes collected into one launch (vss::launch_transposes): add() queues dst planes
// (S x R) = src planes (R x S) transposed (+ add, fp32, laid out like dst), `planes` planes in
// groups of `inner` (vss::Planes gives each tensor's offset and group stride); launch() runs them.
template <typename TS, typename TD>
struct Transposes {
    vss::TransposeJobs<TS, TD> jobs;

    void add(const Tensor& src, vss::Planes sp, Tensor& dst, vss::Planes dp, const Tensor* acc, vss::Planes ap,
             int64_t planes, int64_t inner, int64_t R, int64_t S) {
        if (jobs.count == vss::kMaxTransposeJobs || (jobs.count > 0 && (jobs.R != R || jobs.S != S))) launch();
        jobs.R = (int)R;
        jobs.S = (int)S;
        jobs.job[jobs.count++] = {ptr<const TS>(src), sp, ptr<TD>(dst), dp, acc ? ptr<const float>(*acc) : nullptr, ap,
                                  planes, inner};
    }
    void launch() {
        if (jobs.count > 0) vss::launch_transposes<TS, TD>(jobs, c10::cuda::getCurrentCUDAStream());
        jobs = {};
    }
};

// (b, 4, c, H, W), directions k = 0..3 -> directions 1 and 3 as (b, 2, c, W, H) (transposed planes).
template <typename T>
Tensor column_directions_transposed(const Tensor& t, Transposes<T, T>& tr) {
    const int64_t b = t.size(0), c = t.size(2), H = t.size(3), W = t.size(4), L = H * W;
    Tensor out = at::empty({b, 2, c, W, H}, t.options());
    tr.add(t, {c * L, 2 * c * L}, out, {0, c * L}, nullptr, {}, b * 2 * c, c, H, W);
    return out;
}

// The inverse into a full (b, 4, c, H, W) tensor: colT (b, 2, c, W, H) -> its directions 1 and 3.
template <typename T>
void put_column_directions(const Tensor& colT, Tensor& full, Transposes<T, T>& tr) {
    const int64_t b = full.size(0), c = full.size(2), H = full.size(3), W = full.size(4), L = H * W;
    tr.add(colT, {0, c * L}, full, {c * L, 2 * c * L}, nullptr, {}, b * 2 * c, c, W, H);
}

// x (b, d, H, W) -> its transpose as a contiguous (b, d, W, H) tensor.
template <typename T>
Tensor map_transposed(const Tensor& x, Transposes<T, T>& tr) {
    const int64_t planes = x.size(0) * x.size(1), H = x.size(2), W = x.size(3);
    Tensor out = at::empty({x.size(0), x.size(1), W, H}, x.options());
    tr.add(x, {0, 0}, out, {0, 0}, nullptr, {}, planes, planes, H, W);
    return out;
}

// acc (2, b, d, H, W) fp32: [0] the row directions' sum, [1] the column directions' sum laid out
// as (b, d, W, H) -> their total (b, d, H, W) in dtype T (one pass: transpose, add, cast).
template <typename T>
Tensor merge_accumulators(const Tensor& acc, at::ScalarType dtype) {
    const int64_t b = acc.size(1), d = acc.size(2), H = acc.size(3), W = acc.size(4), L = H * W;
    Tensor out = at::empty({b, d, H, W}, acc.options().dtype(dtype));
    Transposes<float, T> tr;
    tr.add(acc, {b * d * L, 0}, out, {0, 0}, &acc, {0, 0}, b * d, b * d, W, H);
    tr.launch();
    return out;
}

// delta / B / C as the kernel reads them: as given, and with transposed columns (then xT is
// defined) also the column directions' transposed copies and x transposed; out_staged: the
// column directions write y / du / ddelta straight into the image layout (mixed columns);
// acc16: y / du accumulate in the inputs' 16-bit dtype (ScanParams::acc16).
struct KernelInputs {
    Tensor deltaT, BT, CT, xT;
    bool out_staged = false;
    bool acc16 = false;
    bool colT() const { return xT.defined(); }
};

// The column copies a forward kept (omni_fwd with keep_columns) and hands to the backward, or
// none (then the backward makes its own).
struct KeptColumns {
    OptTensor xT, deltaT, BT, CT;
};

void check_kept(const OptTensor& t, const char* name, const Tensor& like, at::IntArrayRef shape) {
    TORCH_CHECK(t.has_value() && t->defined(), "vmambair_scan: omni_bwd got some of the forward's column copies but not ",
                name, " (pass all four from omni_fwd, or none)");
    check_input(*t, name, like);
    TORCH_CHECK(t->scalar_type() == like.scalar_type() && t->sizes() == shape, "vmambair_scan: ", name, " must be ",
                like.scalar_type(), " of shape ", shape, " (as omni_fwd returned it), got ", t->scalar_type(), " ",
                t->sizes());
}

// 16-bit y / du accumulators (ScanParams::acc16): with mixed columns (every direction adds into the
// image layout) and 16-bit inputs, on GPUs with native bf16x2 / f16x2 vector reductions (sm_90+).
bool use_acc16(bool out_staged, at::ScalarType dtype) {
    if (!out_staged || dtype == at::kFloat) return false;
    int dev = 0, major = 0;
    C10_CUDA_CHECK(cudaGetDevice(&dev));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    return major >= 9;
}

KernelInputs kernel_inputs(bool omni, const Tensor& x, const Tensor& delta, const Tensor& B, const Tensor& C,
                           int64_t columns, const KeptColumns& kept = {}) {
    KernelInputs in;
    if (!omni) return in;
    const Columns mode = column_mode(columns);
    if (mode == Columns::kStaged) return in;
    const bool out_staged = mode == Columns::kMixed && vss::column_quads((int)x.size(2), (int)x.size(3));
    const bool acc16 = use_acc16(out_staged, x.scalar_type());
    if (kept.xT.has_value() && kept.xT->defined() && kept.xT->numel() > 0) {
        const int64_t b = x.size(0), d = x.size(1), H = x.size(2), W = x.size(3), N = B.size(2);
        check_kept(kept.xT, "xT", x, {b, d, W, H});
        check_kept(kept.deltaT, "deltaT", x, {b, 2, d, W, H});
        check_kept(kept.BT, "BT", x, {b, 2, N, W, H});
        check_kept(kept.CT, "CT", x, {b, 2, N, W, H});
        return {*kept.deltaT, *kept.BT, *kept.CT, *kept.xT, out_staged, acc16};
    }
    dispatch(x.scalar_type(), [&](auto tag) {
        using T = decltype(tag);
        Transposes<T, T> tr;  // the four copies in one launch
        in = {column_directions_transposed<T>(delta, tr), column_directions_transposed<T>(B, tr),
              column_directions_transposed<T>(C, tr), map_transposed<T>(x, tr), out_staged, acc16};
        tr.launch();
    });
    return in;
}

void set_column_inputs(vss::ScanParams& p, const KernelInputs& in) {
    p.colT = true;
    p.col_out_staged = in.out_staged;
    p.acc16 = in.acc16;
    p.uT = in.xT.data_ptr();
    p.deltaT = in.deltaT.data_ptr();
    p.BT = in.BT.data_ptr();
    p.CT = in.CT.data_ptr();
}

// y, states, and (fused op, transposed columns) the column copies the kernel read.
std::tuple<Tensor, Tensor, KernelInputs> fwd_common(bool omni, const Tensor& u, const Tensor& delta, const Tensor& A,
                                      const Tensor& B, const Tensor& C, const OptTensor& D, const OptTensor& bias,
                                      bool softplus, int64_t nseg, int64_t columns = -1) {
    const Geometry g = check_shapes(omni, u, delta, A, B, C);
    check_param(D, "D", u, g.dim);
    check_param(bias, "delta_bias", u, g.dim);
    c10::cuda::CUDAGuard guard(u.device());
    const int64_t nchunks = (g.L + vss::kChunk - 1) / vss::kChunk;
    const auto f32 = u.options().dtype(at::kFloat);
    Tensor states = at::empty({g.batch, g.dim, nchunks, g.N}, f32);
    if (g.batch == 0 || g.dim == 0 || g.L == 0) {
        return {omni ? at::zeros({g.batch, g.d, g.H, g.W}, u.options()) : at::empty_like(u), states, KernelInputs()};
    }
    const KernelInputs in = kernel_inputs(omni, u, delta, B, C, columns);
    const bool colT = in.colT();
    const bool yT = colT && !in.out_staged;  // the column directions' y goes into a transposed buffer
    // The fused op's directions add into accumulators: [0] in the image's layout, and with
    // transposed column outputs [1] in the transposed one (one zero-fill for both); fp32, or
    // (acc16) the inputs' dtype, which is then y itself.
    Tensor acc = omni ? at::zeros({yT ? 2 : 1, g.batch, g.d, g.H, g.W}, in.acc16 ? u.options() : f32) : Tensor();
    Tensor y = omni ? acc[0] : at::empty_like(u);
    vss::ScanParams p = make_params(omni, g, u, delta, A, B, C, D, bias, softplus);
    Tensor seg_S, seg_H, seg_carry;
    set_segments(p, omni, nseg, u, [&](auto tag) { return vss::fwd_occupancy<decltype(tag)>(omni, p.N); }, seg_S, seg_H,
                 seg_carry);
    p.y = y.data_ptr();
    p.states = states.data_ptr<float>();
    if (colT) {
        set_column_inputs(p, in);
        if (yT) p.yT = acc[1].data_ptr();
    }
    p.vec = g.L % vss::kK == 0 && aligned16(p.u) && aligned16(p.delta) && aligned16(p.y) &&
            (!colT || (aligned16(p.uT) && aligned16(p.deltaT) && (!yT || aligned16(p.yT))));
    auto stream = c10::cuda::getCurrentCUDAStream();
    dispatch(u.scalar_type(), [&](auto tag) { vss::launch_fwd<decltype(tag)>(p, omni, stream); });
    if (yT) {
        dispatch(u.scalar_type(), [&](auto tag) { y = merge_accumulators<decltype(tag)>(acc, u.scalar_type()); });
    } else if (omni && u.scalar_type() != at::kFloat) {
        y = y.to(u.scalar_type());  // (a no-op with acc16)
    }
    return {y, states, in};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> bwd_common(
    bool omni, const Tensor& dy, const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B,
    const Tensor& C, const OptTensor& D, const OptTensor& bias, const Tensor& states, bool softplus, int64_t nseg,
    int64_t columns = -1, const KeptColumns& kept = {}) {
    const Geometry g = check_shapes(omni, u, delta, A, B, C);
    check_param(D, "D", u, g.dim);
    check_param(bias, "delta_bias", u, g.dim);
    check_input(dy, "dy", u);
    TORCH_CHECK(dy.sizes() == u.sizes(), "vmambair_scan: dy must match u ", u.sizes(), ", got ", dy.sizes());
    TORCH_CHECK(dy.scalar_type() == u.scalar_type(), "vmambair_scan: dy must have u's dtype");
    check_input(states, "states", u);
    const int64_t nchunks = (g.L + vss::kChunk - 1) / vss::kChunk;
    TORCH_CHECK(states.scalar_type() == at::kFloat && states.dim() == 4 && states.size(0) == g.batch &&
                states.size(1) == g.dim && states.size(2) == nchunks && states.size(3) == g.N,
                "vmambair_scan: states do not match the inputs (pass the states returned by the forward)");
    c10::cuda::CUDAGuard guard(u.device());
    auto f32 = u.options().dtype(at::kFloat);
    const bool any = g.batch > 0 && g.dim > 0 && g.L > 0;
    const KernelInputs in = any ? kernel_inputs(omni, u, delta, B, C, columns, kept) : KernelInputs();
    const bool colT = in.colT();
    const bool outT = colT && !in.out_staged;  // du / ddelta of the column directions go out transposed
    // Accumulators: du ([0]; with transposed column outputs [1] the columns' du, transposed; one
    // zero-fill; fp32, or with acc16 the inputs' dtype), dB and dC (fp32; separate tensors: the
    // op's outputs must not share memory).
    Tensor du_acc = omni ? at::zeros({outT ? 2 : 1, g.batch, g.d, g.H, g.W}, in.acc16 ? u.options() : f32) : Tensor();
    Tensor du = omni ? du_acc[0] : at::empty_like(u);
    Tensor ddelta = at::empty_like(delta);
    Tensor dA = at::zeros(A.sizes(), f32);
    // With transposed columns the transposes below write the column directions (1, 3) of dB / dC
    // whole: only the row directions, which the kernel adds into, need zeroing.
    auto grad_bc = [&](const Tensor& like) {
        if (!colT) return at::zeros(like.sizes(), f32);
        Tensor t = at::empty(like.sizes(), f32);
        t.slice(1, 0, 4, 2).zero_();
        return t;
    };
    Tensor dB = grad_bc(B);
    Tensor dC = grad_bc(C);
    Tensor dD = D.has_value() ? at::zeros({g.dim}, f32) : at::empty({0}, f32);
    Tensor dbias = bias.has_value() ? at::zeros({g.dim}, f32) : at::empty({0}, f32);
    if (any) {
        // With transposed columns the kernel writes the column directions' dB / dC (and, unless
        // their outputs are staged, ddelta) into column-only transposed tensors, put back below.
        Tensor dyT, ddeltaT, dBT, dCT;
        if (colT) {
            dispatch(u.scalar_type(), [&](auto tag) {
                Transposes<decltype(tag), decltype(tag)> tr;
                dyT = map_transposed(dy, tr);
                tr.launch();
            });
            if (outT) ddeltaT = at::empty_like(in.deltaT);
            Tensor dbcT = at::zeros({2, in.BT.numel()}, f32);  // the columns' dB and dC, one zero-fill
            dBT = dbcT[0].view(in.BT.sizes());
            dCT = dbcT[1].view(in.CT.sizes());
        }
        vss::ScanParams p = make_params(omni, g, u, delta, A, B, C, D, bias, softplus);
        Tensor seg_S, seg_H, seg_carry;
        set_segments(p, omni, nseg, u, [&](auto tag) { return vss::bwd_occupancy<decltype(tag)>(omni, p.N); }, seg_S,
                     seg_H, seg_carry);
        p.states = states.data_ptr<float>();
        p.dy = dy.data_ptr();
        p.du = du.data_ptr();
        p.ddelta = ddelta.data_ptr();
        p.dA = dA.data_ptr<float>();
        p.dB = dB.data_ptr<float>();
        p.dC = dC.data_ptr<float>();
        p.dD = D.has_value() ? dD.data_ptr<float>() : nullptr;
        p.dbias = bias.has_value() ? dbias.data_ptr<float>() : nullptr;
        if (colT) {
            set_column_inputs(p, in);
            p.dyT = dyT.data_ptr();
            if (outT) {
                p.duT = du_acc[1].data_ptr();
                p.ddeltaT = ddeltaT.data_ptr();
            }
            p.dBT = dBT.data_ptr<float>();
            p.dCT = dCT.data_ptr<float>();
        }
        p.vec = g.L % vss::kK == 0 && aligned16(p.u) && aligned16(p.delta) && aligned16(p.dy) &&
                aligned16(p.du) && aligned16(p.ddelta) &&
                (!colT || (aligned16(p.uT) && aligned16(p.deltaT) && aligned16(p.dyT) &&
                           (!outT || (aligned16(p.duT) && aligned16(p.ddeltaT)))));
        auto stream = c10::cuda::getCurrentCUDAStream();
        dispatch(u.scalar_type(), [&](auto tag) { vss::launch_bwd<decltype(tag)>(p, omni, stream); });
        if (outT) {
            dispatch(u.scalar_type(), [&](auto tag) {
                using T = decltype(tag);
                du = merge_accumulators<T>(du_acc, u.scalar_type());
                Transposes<T, T> tr;
                put_column_directions(ddeltaT, ddelta, tr);
                tr.launch();
            });
        }
        if (colT) {
            Transposes<float, float> tr;  // dB and dC in one launch
            put_column_directions(dBT, dB, tr);
            put_column_directions(dCT, dC, tr);
            tr.launch();
        }
    } else {
        ddelta.zero_();
        if (!omni) du.zero_();
    }
    const auto dt = u.scalar_type();
    if (dt != at::kFloat) {
        du = du.to(dt);  // (a no-op when du is already dt: merged transposed columns, or acc16)
        dB = dB.to(dt);
        dC = dC.to(dt);
    }
    return {du, ddelta, dA, dB, dC, dD, dbias};
}

std::tuple<Tensor, Tensor> scan_fwd(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B,
                                    const Tensor& C, const OptTensor& D, const OptTensor& bias, bool softplus,
                                    int64_t nseg) {
    auto out = fwd_common(false, u, delta, A, B, C, D, bias, softplus, nseg);
    return {std::get<0>(out), std::get<1>(out)};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> scan_bwd(
    const Tensor& dy, const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B, const Tensor& C,
    const OptTensor& D, const OptTensor& bias, const Tensor& states, bool softplus, int64_t nseg) {
    return bwd_common(false, dy, u, delta, A, B, C, D, bias, states, softplus, nseg);
}

// keep_columns: also return the column copies the kernel read (xT, deltaT, BT, CT; empty (0,)
// tensors when there are none, i.e. with columns=staged), for the backward to reuse
// instead of transposing again: memory for time, asked for only when gradients will be needed.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> omni_fwd(
    const Tensor& x, const Tensor& delta, const Tensor& A, const Tensor& B, const Tensor& C, const OptTensor& D,
    const OptTensor& bias, bool softplus, int64_t nseg, bool keep_columns, int64_t columns) {
    column_mode(columns);  // refuse a bad mode before any work
    auto [y, states, in] = fwd_common(true, x, delta, A, B, C, D, bias, softplus, nseg, columns);
    if (keep_columns && in.colT()) return {y, states, in.xT, in.deltaT, in.BT, in.CT};
    const Tensor none = at::empty({0}, x.options());
    return {y, states, none, none.clone(), none.clone(), none.clone()};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> omni_bwd(
    const Tensor& dy, const Tensor& x, const Tensor& delta, const Tensor& A, const Tensor& B, const Tensor& C,
    const OptTensor& D, const OptTensor& bias, const Tensor& states, bool softplus, int64_t nseg, const OptTensor& xT,
    const OptTensor& deltaT, const OptTensor& BT, const OptTensor& CT, int64_t columns) {
    column_mode(columns);  // refuse a bad mode before any work
    return bwd_common(true, dy, x, delta, A, B, C, D, bias, states, softplus, nseg, columns, {xT, deltaT, BT, CT});
}

}  // namespace

TORCH_LIBRARY(vmambair_scan, m) {
    m.def("scan_fwd(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? delta_bias, "
          "bool softplus, int nseg=0) -> (Tensor, Tensor)");
    m.def("scan_bwd(Tensor dy, Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, "
          "Tensor? delta_bias, Tensor states, bool softplus, int nseg=0) "
          "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
    m.def("omni_fwd(Tensor x, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? delta_bias, "
          "bool softplus, int nseg=0, bool keep_columns=False, int columns=-1) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
    m.def("omni_bwd(Tensor dy, Tensor x, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, "
          "Tensor? delta_bias, Tensor states, bool softplus, int nseg=0, Tensor? xT=None, Tensor? deltaT=None, "
          "Tensor? BT=None, Tensor? CT=None, int columns=-1) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(vmambair_scan, CUDA, m) {
    m.impl("scan_fwd", &scan_fwd);
    m.impl("scan_bwd", &scan_bwd);
    m.impl("omni_fwd", &omni_fwd);
    m.impl("omni_bwd", &omni_bwd);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "VmambaIR selective-scan CUDA kernels; the ops live in torch.ops.vmambair_scan";
    m.attr("CHUNK") = vss::kChunk;
    m.attr("MAX_N") = vss::kMaxN;
    m.def("cuda_version", []() { return CUDART_VERSION; }, "CUDA version the extension was compiled with");
    m.def("set_summary_early_stop", [](bool on) { g_summary_early_stop = on; },
          "stop the forward summary pass where its remaining terms are 0 in fp32 (default on; off only "
          "to time the difference: the results are the same)");
}
