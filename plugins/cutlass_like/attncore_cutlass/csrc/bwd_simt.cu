// Portable backward: every arch from sm_60, fp32/fp16/bf16 inputs, fp32 arithmetic on CUDA cores.
//
// Probabilities are recomputed from the forward's LSE. Two kernels, no atomics (deterministic):
//   dkdv: one CTA per key tile walks the query tiles that can see it: dV += P^T dO, dK += scale dS^T Q,
//         and writes dS into dbias (each visible pair is visited exactly once here);
//   dq:   one CTA per query tile walks its key tiles: dQ += scale dS K.
// with dS = P * (dO V^T - delta), delta = rowsum(dO * O) - grad_lse, computed before either kernel by
// bwd_prep (below; the tensor-core backward uses it too).
#include "common.cuh"
#include "kernels.h"

namespace attncore {
namespace {

constexpr int kThreads = 128;

// Shared tiles of the pair phase: A rows (queries) and B rows (keys), both as float.
struct PairTiles {
  float* Q;   // [BM][D + 1]
  float* dO;  // [BM][DV + 1]
  float* K;   // [BN][D + 1]
  float* V;   // [BN][DV + 1]
  float* P;   // [BM][BN + 1]
  float* dS;  // [BM][BN + 1]
  float* lse2;   // [BM]
  float* delta;  // [BM]
};

template <int BM, int BN>
__device__ __forceinline__ PairTiles carve(float* smem, int D, int DV) {
  PairTiles t;
  t.Q = smem;
  t.dO = t.Q + BM * (D + 1);
  t.K = t.dO + BM * (DV + 1);
  t.V = t.K + BN * (D + 1);
  t.P = t.V + BN * (DV + 1);
  t.dS = t.P + BM * (BN + 1);
  t.lse2 = t.dS + BM * (BN + 1);
  t.delta = t.lse2 + BM;
  return t;
}

template <int BM, int BN>
__host__ __device__ constexpr int smem_floats(int D, int DV) {
  return BM * (D + 1) + BM * (DV + 1) + BN * (D + 1) + BN * (DV + 1) + 2 * BM * (BN + 1) + 2 * BM;
}

template <typename T>
__device__ __forceinline__ void load_rows(float* dst, int ld, const void* base, const int64_t* st, int b, int row0, int g, int h, int rows, int nvalid,
                                          int cols) {
  for (int e = threadIdx.x; e < rows * cols; e += kThreads) {
    const int r = e / cols, c = e % cols;
    dst[r * ld + c] = r < nvalid ? to_float<T>(row_ptr<T>(base, st, b, row0 + r, g, h)[c]) : 0.f;
  }
}

// Queries [m0, m0 + BM) x keys [n0, n0 + BN) (local): P and dS into shared memory, dS into dbias.
template <typename T, int BM, int BN>
__device__ __forceinline__ void pair_phase(const BwdParams& bp, const Seq& sq, int g, int h, int m0, int n0, const PairTiles& t, bool write_dbias) {
  const Params& p = bp.f;
  const int D = p.K, DV = p.Kv;
  const bool full = tile_all_visible(p, sq, m0, min(m0 + BM, sq.qlen), n0, n0 + BN);
  for (int e = threadIdx.x; e < BM * BN; e += kThreads) {
    const int r = e / BN, c = e % BN;
    const int i = m0 + r, j = n0 + c;
    float pr = 0.f, ds = 0.f;
    if (i < sq.qlen && (full || visible(p, sq, i, j))) {
      const float* qr = t.Q + r * (D + 1);
      const float* kr = t.K + c * (D + 1);
      float s = 0.f;
      for (int d = 0; d < D; ++d) s = fmaf(qr[d], kr[d], s);
      s *= p.scale_log2;
      if (p.bias != nullptr) s += load_bias<T>(p, sq.b, g, h, sq.q0 + i, sq.k0 + j) * kLog2e;
      pr = exp2f(s - t.lse2[r]);
      const float* dor = t.dO + r * (DV + 1);
      const float* vr = t.V + c * (DV + 1);
      float dp = 0.f;
      for (int d = 0; d < DV; ++d) dp = fmaf(dor[d], vr[d], dp);
      ds = pr * (dp - t.delta[r]);
      if (write_dbias) {
        const int64_t at = ((((int64_t)sq.b * p.G + g) * p.H + h) * p.Mq + sq.q0 + i) * p.Mk + sq.k0 + j;
        if (bp.dbias_f32) {
          reinterpret_cast<float*>(bp.dbias)[at] = ds;
        } else {
          reinterpret_cast<T*>(bp.dbias)[at] = from_float<T>(ds);
        }
      }
    }
    t.P[r * (BN + 1) + c] = pr;
    t.dS[r * (BN + 1) + c] = ds;
  }
}

template <typename T, int BM>
__device__ __forceinline__ void load_row_stats(const BwdParams& bp, const Seq& sq, int g, int h, int m0, const PairTiles& t) {
  const Params& p = bp.f;
  for (int r = threadIdx.x; r < BM; r += kThreads) {
    const int i = m0 + r;
    float l2 = INFINITY, dl = 0.f;  // rows past the sequence: exp2(s - inf) = 0
    if (i < sq.qlen) {
      const int64_t at = ((int64_t)(sq.b * p.G + g) * p.H + h) * p.Mq + sq.q0 + i;
      l2 = bp.lse2[at];
      dl = bp.delta[at];
    }
    t.lse2[r] = l2;
    t.delta[r] = dl;
  }
}

template <typename T, int BM, int BN, int MAXD>
__global__ void __launch_bounds__(kThreads) bwd_dkdv_simt_kernel(BwdParams bp) {
  ATTNCORE_DYNAMIC_SMEM(smem_bytes);
  float* smem = reinterpret_cast<float*>(smem_bytes);
  const Params& p = bp.f;
  const int D = p.K, DV = p.Kv;
  const PairTiles t = carve<BM, BN>(smem, D, DV);
  constexpr int TPR = kThreads / BN;  // threads per key row
  constexpr int NC = MAXD / TPR;
  const int g = blockIdx.z / p.H, h = blockIdx.z % p.H;
  const Seq sq = load_seq(p, blockIdx.y, bp.seq_kw);
  const int n0 = blockIdx.x * BN;
  if (n0 >= sq.klen) return;
  const int n1 = min(n0 + BN, sq.klen);
  load_rows<T>(t.K, D + 1, p.k, p.k_s, sq.b, sq.k0 + n0, g, h, BN, n1 - n0, D);
  load_rows<T>(t.V, DV + 1, p.v, p.v_s, sq.b, sq.k0 + n0, g, h, BN, n1 - n0, DV);
  const int my_r = threadIdx.x / TPR, my_c = threadIdx.x % TPR;
  float dk[NC], dv[NC];
#pragma unroll
  for (int u = 0; u < NC; ++u) dk[u] = dv[u] = 0.f;
  int m_lo, m_hi;
  query_range(p, sq, n0, n1, &m_lo, &m_hi);
  for (int m0 = m_lo; m0 < m_hi; m0 += BM) {
    __syncthreads();
    const int rows = min(BM, m_hi - m0);
    load_rows<T>(t.Q, D + 1, p.q, p.q_s, sq.b, sq.q0 + m0, g, h, BM, rows, D);
    load_rows<T>(t.dO, DV + 1, bp.dout, bp.do_s, sq.b, sq.q0 + m0, g, h, BM, rows, DV);
    load_row_stats<T, BM>(bp, sq, g, h, m0, t);
    __syncthreads();
    pair_phase<T, BM, BN>(bp, sq, g, h, m0, n0, t, bp.dbias != nullptr);
    __syncthreads();
#pragma unroll
    for (int u = 0; u < NC; ++u) {
      const int col = my_c + u * TPR;
      if (col < D) {
        float a = dk[u];
        for (int r = 0; r < BM; ++r) a = fmaf(t.dS[r * (BN + 1) + my_r], t.Q[r * (D + 1) + col], a);
        dk[u] = a;
      }
      if (col < DV) {
        float a = dv[u];
        for (int r = 0; r < BM; ++r) a = fmaf(t.P[r * (BN + 1) + my_r], t.dO[r * (DV + 1) + col], a);
        dv[u] = a;
      }
    }
  }
  const int j = n0 + my_r;
  if (j >= sq.klen) return;
  T* dkr = row_ptr_mut<T>(bp.dk, bp.dk_s, sq.b, sq.kw0 + j, g, h);
  T* dvr = row_ptr_mut<T>(bp.dv, bp.dv_s, sq.b, sq.kw0 + j, g, h);
#pragma unroll
  for (int u = 0; u < NC; ++u) {
    const int col = my_c + u * TPR;
    if (col < D) dkr[col] = from_float<T>(dk[u] * p.scale);
    if (col < DV) dvr[col] = from_float<T>(dv[u]);
  }
}

template <typename T, int BM, int BN, int MAXD>
__global__ void __launch_bounds__(kThreads) bwd_dq_simt_kernel(BwdParams bp) {
  ATTNCORE_DYNAMIC_SMEM(smem_bytes);
  float* smem = reinterpret_cast<float*>(smem_bytes);
  const Params& p = bp.f;
  const int D = p.K, DV = p.Kv;
  const PairTiles t = carve<BM, BN>(smem, D, DV);
  constexpr int TPR = kThreads / BM;  // threads per query row
  constexpr int NC = MAXD / TPR;
  const int g = blockIdx.z / p.H, h = blockIdx.z % p.H;
  const Seq sq = load_seq(p, blockIdx.y, bp.seq_kw);
  const int m0 = blockIdx.x * BM;
  if (m0 >= sq.qlen) return;
  const int m1 = min(m0 + BM, sq.qlen);
  load_rows<T>(t.Q, D + 1, p.q, p.q_s, sq.b, sq.q0 + m0, g, h, BM, m1 - m0, D);
  load_rows<T>(t.dO, DV + 1, bp.dout, bp.do_s, sq.b, sq.q0 + m0, g, h, BM, m1 - m0, DV);
  load_row_stats<T, BM>(bp, sq, g, h, m0, t);
  const int my_r = threadIdx.x / TPR, my_c = threadIdx.x % TPR;
  float dq[NC];
#pragma unroll
  for (int u = 0; u < NC; ++u) dq[u] = 0.f;
  int n_lo, n_hi;
  key_range(p, sq, m0, m1, &n_lo, &n_hi);
  for (int n0 = n_lo; n0 < n_hi; n0 += BN) {
    __syncthreads();
    load_rows<T>(t.K, D + 1, p.k, p.k_s, sq.b, sq.k0 + n0, g, h, BN, min(BN, n_hi - n0), D);
    load_rows<T>(t.V, DV + 1, p.v, p.v_s, sq.b, sq.k0 + n0, g, h, BN, min(BN, n_hi - n0), DV);
    __syncthreads();
    pair_phase<T, BM, BN>(bp, sq, g, h, m0, n0, t, false);  // dbias is written by the dkdv kernel
    __syncthreads();
#pragma unroll
    for (int u = 0; u < NC; ++u) {
      const int col = my_c + u * TPR;
      if (col < D) {
        float a = dq[u];
        for (int c = 0; c < BN; ++c) a = fmaf(t.dS[my_r * (BN + 1) + c], t.K[c * (D + 1) + col], a);
        dq[u] = a;
      }
    }
  }
  const int i = m0 + my_r;
  if (i >= sq.qlen) return;
  T* dqr = row_ptr_mut<T>(bp.dq, bp.dq_s, sq.b, sq.q0 + i, g, h);
#pragma unroll
  for (int u = 0; u < NC; ++u) {
    const int col = my_c + u * TPR;
    if (col < D) dqr[col] = from_float<T>(dq[u] * p.scale);
  }
}

template <typename T, int BM, int BN, int MAXD>
cudaError_t launch(const BwdParams& bp, cudaStream_t stream) {
  const Params& p = bp.f;
  const int smem = smem_floats<BM, BN>(p.K, p.Kv) * (int)sizeof(float);
  auto kdkdv = bwd_dkdv_simt_kernel<T, BM, BN, MAXD>;
  auto kdq = bwd_dq_simt_kernel<T, BM, BN, MAXD>;
  if (!allow_smem(kdkdv, smem) || !allow_smem(kdq, smem)) return cudaErrorInvalidConfiguration;
  dim3 g1((p.max_k + BN - 1) / BN, p.num_seqs, p.G * p.H);
  ATTNCORE_LAUNCH(kdkdv, g1, kThreads, smem, stream, bp);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  dim3 g2((p.max_q + BM - 1) / BM, p.num_seqs, p.G * p.H);
  ATTNCORE_LAUNCH(kdq, g2, kThreads, smem, stream, bp);
  return cudaGetLastError();
}

template <typename T>
cudaError_t dispatch(const BwdParams& bp, cudaStream_t stream) {
  if (max(bp.f.K, bp.f.Kv) <= 128) return launch<T, 16, 16, 128>(bp, stream);
  return launch<T, 8, 8, 256>(bp, stream);
}

// One warp per row r of [B, G, H, Mq] (the statistics' order): delta[r] = sum_c dO[c] O[c] - grad_lse[r]
// (fp32 products and sums) and lse2[r].
template <typename T>
__global__ void __launch_bounds__(256) bwd_prep_kernel(PrepParams pp) {
  const int64_t rows = (int64_t)pp.B * pp.G * pp.H * pp.Mq;
  const int64_t r = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;  // whole warps only: rows are per warp
  const int m = (int)(r % pp.Mq);
  const int64_t bgh = r / pp.Mq;
  const int h = (int)(bgh % pp.H), g = (int)(bgh / pp.H % pp.G), b = (int)(bgh / ((int64_t)pp.H * pp.G));
  const T* dor = row_ptr<T>(pp.dout, pp.do_s, b, m, g, h);
  const T* orow = row_ptr<T>(pp.out, pp.o_s, b, m, g, h);
  float acc = 0.f;
  for (int c = lane; c < pp.Kv; c += 32) acc = fmaf(to_float<T>(dor[c]), to_float<T>(orow[c]), acc);
#pragma unroll
  for (int off = 16; off > 0; off /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, off);
  if (lane == 0) {
    pp.delta[r] = pp.grad_lse != nullptr ? acc - pp.grad_lse[r] : acc;
    const float l = pp.lse[r];
    pp.lse2[r] = l == -INFINITY ? INFINITY : l * kLog2e;
  }
}

template <typename T>
cudaError_t prep(const PrepParams& pp, cudaStream_t stream) {
  constexpr int kWarps = 8;
  const int64_t rows = (int64_t)pp.B * pp.G * pp.H * pp.Mq;
  if (rows == 0) return cudaSuccess;
  ATTNCORE_LAUNCH(bwd_prep_kernel<T>, dim3((unsigned)((rows + kWarps - 1) / kWarps)), kWarps * 32, 0, stream, pp);
  return cudaGetLastError();
}

}  // namespace

cudaError_t bwd_prep(const PrepParams& pp, DType dt, cudaStream_t stream) {
  switch (dt) {
    case DType::kF32: return prep<float>(pp, stream);
    case DType::kF16: return prep<__half>(pp, stream);
    case DType::kBF16: return prep<__nv_bfloat16>(pp, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t bwd_simt(const BwdParams& bp, DType dt, cudaStream_t stream) {
  switch (dt) {
    case DType::kF32: return dispatch<float>(bp, stream);
    case DType::kF16: return dispatch<__half>(bp, stream);
    case DType::kBF16: return dispatch<__nv_bfloat16>(bp, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace attncore
