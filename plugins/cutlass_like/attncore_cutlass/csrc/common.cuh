// attncore-cutlass: what every kernel shares on the device: the sequence and band geometry (which
// keys a query may see), element conversions, bias and output access, warp reductions. Scores are
// kept in base 2: the softmax scale is folded into log2(e). The call itself is Params (params.h).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include <cmath>

#include "params.h"

namespace attncore {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// The slice of the problem one sequence owns.
struct Seq {
  int b;      // batch index
  int q0;     // first query row (global)
  int qlen;
  int k0;     // first key row (global)
  int klen;
  int kw0;    // first dK/dV row (global), backward only
  int shift;  // band shift
};

// A CTA's coordinates in its grid (x: its row or key block, y: its sequence, z: its (group, head)). The GPU
// hands CTAs out in the order of their linear index (x fastest), each to the first multiprocessor with room.
// rows_first == 0: blockIdx as launched, so a (sequence, head)'s blocks go out together; rows_first == 1: the
// linear index renumbered so that x varies slowest: every (sequence, head)'s x = 0 first, then every x = 1, ...
// (where block work differs by x alone, as under a causal band, the longest work of the whole call first;
// fwd_tc.cu's fwd_cta). A bijection on the grid either way.
struct CtaPos {
  unsigned x, y, z;  // unsigned, as blockIdx's are (the kernels' index arithmetic keeps its types)
};

__device__ __forceinline__ CtaPos cta_pos(int rows_first) {
  if (!rows_first) return CtaPos{blockIdx.x, blockIdx.y, blockIdx.z};
  const uint64_t pairs = (uint64_t)gridDim.y * gridDim.z;  // (sequence, head) pairs
  const uint64_t lin = blockIdx.x + gridDim.x * ((uint64_t)blockIdx.y + (uint64_t)gridDim.y * blockIdx.z);
  const uint64_t pair = lin % pairs;
  return CtaPos{(unsigned)(lin / pairs), (unsigned)(pair % gridDim.y), (unsigned)(pair / gridDim.y)};
}

__device__ __forceinline__ Seq load_seq(const Params& p, int s, const int* seq_kw = nullptr) {
  Seq r;
  if (p.varlen) {
    r.b = 0;
    r.q0 = p.seq_q[s];
    r.qlen = p.seq_q[s + 1] - r.q0;
    r.k0 = p.seq_k[s];
    r.klen = p.seq_klen[s];
    r.kw0 = seq_kw != nullptr ? seq_kw[s] : r.k0;
  } else {
    r.b = s;
    r.q0 = 0;
    r.qlen = p.Mq;
    r.k0 = 0;
    r.klen = p.Mk;
    r.kw0 = 0;
  }
  r.shift = p.bottom_right ? r.klen - r.qlen : 0;
  return r;
}

__device__ __forceinline__ bool visible(const Params& p, const Seq& s, int i, int j) {
  if (i >= s.qlen || j >= s.klen || j < 0) return false;
  int d = j - i - s.shift;
  return d >= p.band_lo && d <= p.band_hi;
}

// Keys [lo, hi) that queries [m0, m1) (local, m1 > m0) can see.
__device__ __forceinline__ void key_range(const Params& p, const Seq& s, int m0, int m1, int* lo, int* hi) {
  long long a = (long long)m0 + s.shift + p.band_lo;
  long long b = (long long)(m1 - 1) + s.shift + p.band_hi + 1;
  *lo = (int)max(0LL, a);
  *hi = (int)min((long long)s.klen, b);
}

// Queries [lo, hi) that keys [n0, n1) (local) can be seen by.
__device__ __forceinline__ void query_range(const Params& p, const Seq& s, int n0, int n1, int* lo, int* hi) {
  long long a = (long long)n0 - s.shift - p.band_hi;
  long long b = (long long)(n1 - 1) - s.shift - p.band_lo + 1;
  *lo = (int)max(0LL, a);
  *hi = (int)min((long long)s.qlen, b);
}

// Keys [lo, hi) (local) that query i (local) may see: one interval per row, so a masked tile tests two
// bounds per element instead of the band arithmetic; empty for rows past the sequence's end.
__device__ __forceinline__ void row_keys(const Params& p, const Seq& s, int i, int* lo, int* hi) {
  if (i >= s.qlen) {
    *lo = 0;
    *hi = 0;
    return;
  }
  key_range(p, s, i, i + 1, lo, hi);
}

// Whether every (query, key) pair of the tile [m0, m1) x [n0, n1) is visible (no per-element mask).
__device__ __forceinline__ bool tile_all_visible(const Params& p, const Seq& s, int m0, int m1, int n0, int n1) {
  if (n1 > s.klen || m1 > s.qlen) return false;
  long long dmin = (long long)n0 - (m1 - 1) - s.shift;
  long long dmax = (long long)(n1 - 1) - m0 - s.shift;
  return dmin >= p.band_lo && dmax <= p.band_hi;
}

template <typename T>
__device__ __forceinline__ float to_float(T x);
template <>
__device__ __forceinline__ float to_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ float to_float<__half>(__half x) { return __half2float(x); }
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// Row of a [B, M, G, H, *] view.
template <typename T>
__device__ __forceinline__ const T* row_ptr(const void* base, const int64_t* st, int b, int m, int g, int h) {
  return reinterpret_cast<const T*>(base) + b * st[0] + (int64_t)m * st[1] + g * st[2] + h * st[3];
}
template <typename T>
__device__ __forceinline__ T* row_ptr_mut(void* base, const int64_t* st, int b, int m, int g, int h) {
  return reinterpret_cast<T*>(base) + b * st[0] + (int64_t)m * st[1] + g * st[2] + h * st[3];
}

// The tensor bias at (b, g, h, query row, key row), global rows; stored as float or as the inputs' type T.
template <typename T>
__device__ __forceinline__ float load_bias(const Params& p, int b, int g, int h, int qi, int kj) {
  int64_t off = b * p.b_s[0] + g * p.b_s[1] + h * p.b_s[2] + (int64_t)qi * p.b_s[3] + (int64_t)kj * p.b_s[4];
  if (p.bias_f32) return reinterpret_cast<const float*>(p.bias)[off];
  return to_float<T>(reinterpret_cast<const T*>(p.bias)[off]);
}

template <typename T>
__device__ __forceinline__ void store_out(const Params& p, int b, int m, int g, int h, int c, float x) {
  if (p.out_f32) {
    row_ptr_mut<float>(p.out, p.o_s, b, m, g, h)[c] = x;
  } else {
    row_ptr_mut<T>(p.out, p.o_s, b, m, g, h)[c] = from_float<T>(x);
  }
}

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
  return x;
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  x += __shfl_xor_sync(0xffffffffu, x, 2);
  return x;
}

// exp2 of a base-2 score relative to a row maximum; rows whose maximum is -inf (nothing visible yet) use 0.
__device__ __forceinline__ float safe_max(float m) { return m == -INFINITY ? 0.f : m; }

}  // namespace attncore
