// Portable forward: every arch from sm_60, fp32/fp16/bf16 inputs, fp32 arithmetic on CUDA cores.
//
// One CTA of 128 threads owns BM queries of one (sequence, group, head) and streams the keys they can
// see in tiles of BN, keeping a running row maximum and sum (online softmax, base 2). Q and the K/V
// tile live in shared memory as float (rows padded by one so column walks avoid bank conflicts).
#include "common.cuh"
#include "kernels.h"

namespace attncore {
namespace {

constexpr int kThreads = 128;

template <typename T, int BM, int BN, int MAXD>
__global__ void __launch_bounds__(kThreads) fwd_simt_kernel(Params p) {
  ATTNCORE_DYNAMIC_SMEM(smem_bytes);
  float* smem = reinterpret_cast<float*>(smem_bytes);
  const int D = p.K, DV = p.Kv;
  const int ldq = D + 1, ldkv = max(D, DV) + 1;
  float* Qs = smem;              // [BM][D + 1]
  float* KVs = Qs + BM * ldq;    // [BN][max(D, DV) + 1]: K, then V
  float* Ss = KVs + BN * ldkv;   // [BM][BN + 1]: scores, then probabilities
  constexpr int LDS = BN + 1;
  constexpr int TPR = kThreads / BM;  // threads per query row
  constexpr int NC = MAXD / TPR;      // output columns per thread

  const int tid = threadIdx.x;
  const int g = blockIdx.z / p.H, h = blockIdx.z % p.H;
  const Seq sq = load_seq(p, blockIdx.y);
  const int m0 = blockIdx.x * BM;
  if (m0 >= sq.qlen) return;
  const int m1 = min(m0 + BM, sq.qlen);

  for (int e = tid; e < BM * D; e += kThreads) {
    const int r = e / D, c = e % D;
    Qs[r * ldq + c] = m0 + r < sq.qlen ? to_float<T>(row_ptr<T>(p.q, p.q_s, sq.b, sq.q0 + m0 + r, g, h)[c]) : 0.f;
  }
  const int my_r = tid / TPR, my_c = tid % TPR;
  float acc[NC];
#pragma unroll
  for (int u = 0; u < NC; ++u) acc[u] = 0.f;
  float m_run = -INFINITY, l_run = 0.f;

  int n_lo, n_hi;
  key_range(p, sq, m0, m1, &n_lo, &n_hi);
  for (int n0 = n_lo; n0 < n_hi; n0 += BN) {
    __syncthreads();  // the previous V tile and probabilities are consumed
    for (int e = tid; e < BN * D; e += kThreads) {
      const int r = e / D, c = e % D;
      KVs[r * ldkv + c] = n0 + r < n_hi ? to_float<T>(row_ptr<T>(p.k, p.k_s, sq.b, sq.k0 + n0 + r, g, h)[c]) : 0.f;
    }
    __syncthreads();
    const bool full = tile_all_visible(p, sq, m0, m0 + BM, n0, n0 + BN);  // a partial last tile: per-element checks
    for (int e = tid; e < BM * BN; e += kThreads) {
      const int r = e / BN, c = e % BN;
      const float* qr = Qs + r * ldq;
      const float* kr = KVs + c * ldkv;
      float dot = 0.f;
      for (int d = 0; d < D; ++d) dot = fmaf(qr[d], kr[d], dot);
      const int i = m0 + r, j = n0 + c;
      float s = dot * p.scale_log2;
      const bool ok = full || visible(p, sq, i, j);
      if (ok && p.bias != nullptr) s += load_bias<T>(p, sq.b, g, h, sq.q0 + i, sq.k0 + j) * kLog2e;
      Ss[r * LDS + c] = ok ? s : -INFINITY;
    }
    __syncthreads();
    for (int e = tid; e < BN * DV; e += kThreads) {
      const int r = e / DV, c = e % DV;
      KVs[r * ldkv + c] = n0 + r < n_hi ? to_float<T>(row_ptr<T>(p.v, p.v_s, sq.b, sq.k0 + n0 + r, g, h)[c]) : 0.f;
    }
    // online softmax of this thread's row (TPR neighbouring lanes share it)
    float mx = -INFINITY;
    for (int c = my_c; c < BN; c += TPR) mx = fmaxf(mx, Ss[my_r * LDS + c]);
#pragma unroll
    for (int o = TPR / 2; o > 0; o /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    const float m_new = fmaxf(m_run, mx);
    const float mu = safe_max(m_new);
    const float alpha = exp2f(m_run - mu);
    float ps = 0.f;
    for (int c = my_c; c < BN; c += TPR) {
      const float pr = exp2f(Ss[my_r * LDS + c] - mu);
      Ss[my_r * LDS + c] = pr;
      ps += pr;
    }
#pragma unroll
    for (int o = TPR / 2; o > 0; o /= 2) ps += __shfl_xor_sync(0xffffffffu, ps, o);
    l_run = l_run * alpha + ps;
    m_run = m_new;
    __syncthreads();  // V and the probabilities are in place
    const float* pr = Ss + my_r * LDS;
#pragma unroll
    for (int u = 0; u < NC; ++u) {
      const int col = my_c + u * TPR;
      if (col < DV) {
        float a = acc[u] * alpha;
        for (int c = 0; c < BN; ++c) a = fmaf(pr[c], KVs[c * ldkv + col], a);
        acc[u] = a;
      }
    }
  }
  const int i = m0 + my_r;
  if (i >= sq.qlen) return;
  const float inv = l_run > 0.f ? 1.f / l_run : 0.f;
#pragma unroll
  for (int u = 0; u < NC; ++u) {
    const int col = my_c + u * TPR;
    if (col < DV) store_out<T>(p, sq.b, sq.q0 + i, g, h, col, acc[u] * inv);
  }
  if (p.lse != nullptr && my_c == 0) {
    const int64_t at = ((int64_t)(sq.b * p.G + g) * p.H + h) * p.Mq + sq.q0 + i;
    p.lse[at] = l_run > 0.f ? (m_run + log2f(l_run)) * kLn2 : -INFINITY;
  }
}

template <typename T, int BM, int BN, int MAXD>
cudaError_t launch(const Params& p, cudaStream_t stream) {
  const int ldkv = max(p.K, p.Kv) + 1;
  const int smem = (BM * (p.K + 1) + BN * ldkv + BM * (BN + 1)) * (int)sizeof(float);
  auto kern = fwd_simt_kernel<T, BM, BN, MAXD>;
  if (!allow_smem(kern, smem)) return cudaErrorInvalidConfiguration;
  dim3 grid((p.max_q + BM - 1) / BM, p.num_seqs, p.G * p.H);
  ATTNCORE_LAUNCH(kern, grid, kThreads, smem, stream, p);
  return cudaGetLastError();
}

template <typename T>
cudaError_t dispatch(const Params& p, cudaStream_t stream) {
  if (max(p.K, p.Kv) <= 128) return launch<T, 32, 16, 128>(p, stream);
  return launch<T, 16, 16, 256>(p, stream);
}

}  // namespace

cudaError_t fwd_simt(const Params& p, DType dt, cudaStream_t stream) {
  switch (dt) {
    case DType::kF32: return dispatch<float>(p, stream);
    case DType::kF16: return dispatch<__half>(p, stream);
    case DType::kBF16: return dispatch<__nv_bfloat16>(p, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace attncore
