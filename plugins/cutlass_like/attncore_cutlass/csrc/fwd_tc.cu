// Tensor-core forward for fp16/bf16 on sm_80 and newer (mma.sync m16n8k16; Hopper runs it too).
//
// One CTA of 8 warps owns 128 queries of one (sequence, group, head); each warp owns 16 of them and
// keeps its output tile in registers (and, for D <= 128, its Q fragments). Keys stream through shared
// memory in tiles of BN with a two-stage cp.async pipeline: tile n + 1 (K and V) loads while tile n is
// multiplied. Scores stay in registers and become the A operand of P V directly (see mma.cuh). Head
// dims are padded with zeros to D (64, 128 or 256); only tiles that cross a band edge or a sequence end
// evaluate the mask. Query tiles are scheduled last-first, so under a causal mask the longest rows start
// first and the short ones fill the tail.
#include "common.cuh"
#include "kernels.h"
#include "mma.cuh"

namespace attncore {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kBM = kWarps * 16;

template <int D, int BN, int STAGES>
constexpr int fwd_smem_bytes() {
  return (kBM + 2 * STAGES * BN) * (D + 8) * 2;
}

// One key tile of the online softmax for the rows i0 and i0 + 8 this thread holds (columns j0 + 8 nt
// and j0 + 8 nt + 1 of its score fragment s): scores become probabilities in place (base 2), the running
// maximum m_r and this thread's share of the row sum l_r are updated, and the output rows are rescaled.
// kMasked: apply the bias and each row's key interval; else every score is visible and unbiased, and
// the scale (positive) is applied inside the exponent.
template <bool kMasked, typename T, int BN, int D>
__device__ __forceinline__ void online_softmax(const Params& p, const Seq& sq, int g, int h, int i0, int j0,
                                               float (&s)[BN / 8][4], float (&o)[D / 8][4], float (&m_r)[2],
                                               float (&l_r)[2]) {
  const float scale = p.scale_log2;
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    float mx = -INFINITY;
    if constexpr (kMasked) {
      const int i = i0 + 8 * hr;
      int lo, hi;
      row_keys(p, sq, i, &lo, &hi);
#pragma unroll
      for (int nt = 0; nt < BN / 8; ++nt) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int j = j0 + nt * 8 + e;
          const bool ok = j >= lo && j < hi;
          float x = s[nt][2 * hr + e] * scale;
          if (ok && p.bias != nullptr) x += load_bias<T>(p, sq.b, g, h, sq.q0 + i, sq.k0 + j) * kLog2e;
          s[nt][2 * hr + e] = ok ? x : -INFINITY;
          mx = fmaxf(mx, s[nt][2 * hr + e]);
        }
      }
    } else {
#pragma unroll
      for (int nt = 0; nt < BN / 8; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * hr], s[nt][2 * hr + 1]));
      mx *= scale;
    }
    mx = quad_max(mx);
    const float m_new = fmaxf(m_r[hr], mx);
    const float mu = safe_max(m_new);
    const float alpha = tc::fast_exp2(m_r[hr] - mu);
    m_r[hr] = m_new;
    float ps = 0.f;
#pragma unroll
    for (int nt = 0; nt < BN / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        float& x = s[nt][2 * hr + e];
        x = kMasked ? tc::fast_exp2(x - mu) : tc::fast_exp2(fmaf(x, scale, -mu));
        ps += x;
      }
    }
    l_r[hr] = l_r[hr] * alpha + ps;  // this thread's share; summed over the quad at the end
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) {
      o[dt][2 * hr] *= alpha;
      o[dt][2 * hr + 1] *= alpha;
    }
  }
}

template <typename T, int D, int BN, int STAGES>
__global__ void __launch_bounds__(kThreads) fwd_tc_kernel(Params p) {
#if ATTNCORE_TC
  using M = tc::Mma<T>;
  constexpr int LD = D + 8;  // 16-byte row padding: ldmatrix rows land in distinct banks
  constexpr bool kQRegs = D <= 128;
  ATTNCORE_DYNAMIC_SMEM(smem_raw);
  T* Qs = reinterpret_cast<T*>(smem_raw);
  T* KVs = Qs + kBM * LD;  // stage s: K at KVs + 2 s BN LD, V right after it

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int gr = lane / 4, tq = lane % 4;
  const int g = blockIdx.z / p.H, h = blockIdx.z % p.H;
  const Seq sq = load_seq(p, blockIdx.y);
  const int m0 = (gridDim.x - 1 - blockIdx.x) * kBM;  // longest rows first
  if (m0 >= sq.qlen) return;
  const int m1 = min(m0 + kBM, sq.qlen);
  int n_lo, n_hi;
  key_range(p, sq, m0, m1, &n_lo, &n_hi);
  const bool vec = p.vec != 0;

  auto load_kv = [&](int n0, int stage) {
    T* Ks = KVs + stage * 2 * BN * LD;
    tc::load_tile<T, BN, D, LD, kThreads>(Ks, p.k, p.k_s, sq.b, sq.k0 + n0, g, h, n_hi - n0, p.K, vec);
    tc::load_tile<T, BN, D, LD, kThreads>(Ks + BN * LD, p.v, p.v_s, sq.b, sq.k0 + n0, g, h, n_hi - n0, p.Kv, vec);
  };

  tc::load_tile<T, kBM, D, LD, kThreads>(Qs, p.q, p.q_s, sq.b, sq.q0 + m0, g, h, sq.qlen - m0, p.K, vec);
  if (n_lo < n_hi) load_kv(n_lo, 0);
  tc::cp_async_commit();

  float o[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float m_r[2] = {-INFINITY, -INFINITY};
  float l_r[2] = {0.f, 0.f};
  uint32_t qf[kQRegs ? D / 16 : 1][4];
  const T* q_warp = Qs + (warp * 16 + lane % 16) * LD + (lane / 16) * 8;

  int stage = 0;
  for (int n0 = n_lo; n0 < n_hi; n0 += BN, stage ^= 1) {
    const bool more = n0 + BN < n_hi;
    if (STAGES == 2 && more) load_kv(n0 + BN, stage ^ 1);  // the other stage was released by the last iteration's barrier
    tc::cp_async_commit();
    if (STAGES == 2 && more) {
      tc::cp_async_wait<1>();
    } else {
      tc::cp_async_wait<0>();
    }
    __syncthreads();  // tile n0 (and Q) in place for every warp
    const int st = STAGES == 2 ? stage : 0;
    const T* Ks = KVs + st * 2 * BN * LD;
    const T* Vs = Ks + BN * LD;
    if (kQRegs && n0 == n_lo) {
#pragma unroll
      for (int kk = 0; kk < (kQRegs ? D / 16 : 0); ++kk) tc::ldmatrix_x4(qf[kk], q_warp + kk * 16);
    }
    float s[BN / 8][4];
#pragma unroll
    for (int i = 0; i < BN / 8; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t a_tmp[4];
      const uint32_t* a = a_tmp;
      if constexpr (kQRegs) {
        a = qf[kk];
      } else {
        tc::ldmatrix_x4(a_tmp, q_warp + kk * 16);
      }
#pragma unroll
      for (int np = 0; np < BN / 16; ++np) {
        uint32_t b[4];
        tc::ldmatrix_x4(b, Ks + (np * 16 + lane % 8 + (lane / 16) * 8) * LD + kk * 16 + ((lane / 8) % 2) * 8);
        M::run(s[2 * np], a, b);
        M::run(s[2 * np + 1], a, b + 2);
      }
    }

    // Tiles inside the band with no bias (most of them) take the plain path: the row maximum of the raw
    // scores, then one FMA and one exp2 per element. Tiles on a band edge or a sequence end, and every
    // tile with a bias, test each element against its row's key interval. m0 + kBM, not m1: a partial
    // last query tile must take the masked path (its rows past the sequence have no bias row to read).
    if (p.bias == nullptr && p.scale_log2 > 0.f && tile_all_visible(p, sq, m0, m0 + kBM, n0, n0 + BN)) {
      online_softmax<false, T, BN, D>(p, sq, g, h, m0 + warp * 16 + gr, n0 + 2 * tq, s, o, m_r, l_r);
    } else {
      online_softmax<true, T, BN, D>(p, sq, g, h, m0 + warp * 16 + gr, n0 + 2 * tq, s, o, m_r, l_r);
    }
#pragma unroll
    for (int kc = 0; kc < BN / 16; ++kc) {
      uint32_t a[4];
      a[0] = M::pack(s[2 * kc][0], s[2 * kc][1]);
      a[1] = M::pack(s[2 * kc][2], s[2 * kc][3]);
      a[2] = M::pack(s[2 * kc + 1][0], s[2 * kc + 1][1]);
      a[3] = M::pack(s[2 * kc + 1][2], s[2 * kc + 1][3]);
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t b[4];
        tc::ldmatrix_x4_trans(b, Vs + (kc * 16 + lane % 8 + ((lane / 8) % 2) * 8) * LD + dp * 16 + (lane / 16) * 8);
        M::run(o[2 * dp], a, b);
        M::run(o[2 * dp + 1], a, b + 2);
      }
    }
    __syncthreads();  // every warp is done with this stage before it is refilled
    if (STAGES == 1 && more) load_kv(n0 + BN, 0);
  }
  tc::cp_async_wait<0>();

#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    const float l = quad_sum(l_r[hr]);
    const int i = m0 + warp * 16 + gr + hr * 8;
    if (i >= sq.qlen) continue;
    const float inv = l > 0.f ? 1.f / l : 0.f;
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) {
      const int col = dt * 8 + 2 * tq;
      if (col < p.Kv) store_out<T>(p, sq.b, sq.q0 + i, g, h, col, o[dt][2 * hr] * inv);
      if (col + 1 < p.Kv) store_out<T>(p, sq.b, sq.q0 + i, g, h, col + 1, o[dt][2 * hr + 1] * inv);
    }
    if (p.lse != nullptr && tq == 0) {
      const int64_t at = ((int64_t)(sq.b * p.G + g) * p.H + h) * p.Mq + sq.q0 + i;
      p.lse[at] = l > 0.f ? (m_r[hr] + log2f(l)) * kLn2 : -INFINITY;
    }
  }
#else
  __trap();  // never launched: the host checks tc_compiled_for_device() first
#endif
}

template <typename T, int D, int BN, int STAGES>
bool launch(const Params& p, cudaStream_t stream) {
  constexpr int smem = fwd_smem_bytes<D, BN, STAGES>();
  auto kern = fwd_tc_kernel<T, D, BN, STAGES>;
  if (!allow_smem(kern, smem)) return false;
  dim3 grid((p.max_q + kBM - 1) / kBM, p.num_seqs, p.G * p.H);
  ATTNCORE_LAUNCH(kern, grid, kThreads, smem, stream, p);
  return true;
}

// Two stages where the shared memory allows (sm_80/sm_90), else one (sm_86/sm_89 at D = 256).
template <typename T, int D, int BN>
cudaError_t launch_any(const Params& p, cudaStream_t stream, bool* launched) {
  *launched = launch<T, D, BN, 2>(p, stream) || launch<T, D, BN, 1>(p, stream);
  return *launched ? cudaGetLastError() : cudaSuccess;
}

template <typename T>
cudaError_t dispatch(const Params& p, cudaStream_t stream, bool* launched) {
  const int d = max(p.K, p.Kv);
  if (d <= 64) return launch_any<T, 64, 64>(p, stream, launched);
  if (d <= 128) return launch_any<T, 128, 64>(p, stream, launched);
  if (d <= 256) return launch_any<T, 256, 32>(p, stream, launched);
  return cudaSuccess;
}

}  // namespace

cudaError_t fwd_tc(const Params& p, DType dt, cudaStream_t stream, bool* launched) {
  *launched = false;
  switch (dt) {
    case DType::kF16: return dispatch<__half>(p, stream, launched);
    case DType::kBF16: return dispatch<__nv_bfloat16>(p, stream, launched);
    case DType::kF32: return cudaSuccess;
  }
  return cudaErrorInvalidValue;
}

namespace {
__global__ void probe_kernel(int* out) {
#if defined(__CUDA_ARCH__)
  *out = __CUDA_ARCH__;
#endif
}
}  // namespace

// ptxVersion is the virtual arch the running code was compiled from (SASS built from compute_90, or PTX
// JIT-compiled by the driver): a 7.5+PTX build on an H100 runs compute_75 code, whose tensor-core
// bodies are traps. binaryVersion would say 90 there. Cached per device.
bool tc_compiled_for_device() {
  static int cached[64] = {0};  // 0 unknown, 1 yes, 2 no
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0) return false;
  if (dev >= 64) dev = 63;
  if (cached[dev] == 0) {
    cudaFuncAttributes attr;
    cached[dev] = cudaFuncGetAttributes(&attr, reinterpret_cast<const void*>(probe_kernel)) == cudaSuccess && attr.ptxVersion >= 80 ? 1 : 2;
  }
  return cached[dev] == 1;
}

}  // namespace attncore
