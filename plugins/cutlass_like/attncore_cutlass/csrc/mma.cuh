// Tensor-core building blocks for sm_80 and newer (mma.sync m16n8k16 and m16n8k8.tf32, ldmatrix, cp.async).
//
// Fragment layouts of mma.m16n8k16 (g = lane / 4, t = lane % 4):
//   A (16 x 16, row-major)  a0: (g, 2t..2t+1)  a1: (g+8, 2t..)  a2: (g, 2t+8..)  a3: (g+8, 2t+8..)
//   B (16 x 8, "col")        b0: (k 2t..2t+1, n g)  b1: (k 2t+8..2t+9, n g)
//   C (16 x 8, float)        c0,c1: (g, 2t..2t+1)   c2,c3: (g+8, 2t..2t+1)
// Two C tiles side by side (columns 0-7 and 8-15) hold exactly an A fragment of a 16 x 16 tile, which
// is how probabilities go from one product to the next without touching shared memory.
#pragma once

#include <cstring>
#ifdef ATTNCORE_EMULATE
#include <atomic>
#endif

#include "common.cuh"
#include "kernels.h"

namespace attncore {
namespace tc {

#ifdef ATTNCORE_EMULATE
// The warp-collective instructions on host threads (emulate.h): each lane publishes its operands, every
// lane computes its own part of the result from the documented fragment layouts (see above).
template <typename T>
inline float half_of(uint32_t u, int which);
template <>
inline float half_of<__half>(uint32_t u, int which) {
  __half_raw raw;
  raw.x = static_cast<unsigned short>(which ? u >> 16 : u & 0xffffu);
  return __half2float(__half(raw));
}
template <>
inline float half_of<__nv_bfloat16>(uint32_t u, int which) {
  __nv_bfloat16_raw raw;
  raw.x = static_cast<unsigned short>(which ? u >> 16 : u & 0xffffu);
  return __bfloat162float(__nv_bfloat16(raw));
}

// c += A B for one mma from the lanes' published fragments, E elements per 32-bit register (2 for
// m16n8k16 in f16/bf16, 1 for m16n8k8 in tf32; K = 8 E): lane (g, t) holds A rows g and g + 8 and B
// column g, at k = E t .. E t + E - 1 in its first register of each pair and 4 E more in the second.
// `elem(reg, i)` reads element i of a register.
template <int E, typename Elem>
inline void emu_mma_e(float* c, const uint32_t* a, const uint32_t* b, Elem elem) {
  uint32_t mine[6] = {a[0], a[1], a[2], a[3], b[0], b[1]};
  ::attncore::emu::publish(mine, sizeof(mine));
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  auto reg = [](int src, int r) {
    uint32_t v;
    std::memcpy(&v, ::attncore::emu::lane_slot(src) + 4 * r, 4);
    return v;
  };
  float out[4];
  for (int e = 0; e < 4; ++e) {
    const int row = g + (e >= 2 ? 8 : 0), col = 2 * t + (e & 1);
    double acc = c[e];  // the products of f16/bf16/tf32 operands are exact in double
    for (int k = 0; k < 8 * E; ++k) {
      const int q = (k % (4 * E)) / E, i = k % E, hi = k >= 4 * E ? 1 : 0;
      const double av = elem(reg((row % 8) * 4 + q, (row >= 8 ? 1 : 0) + 2 * hi), i);
      const double bv = elem(reg(col * 4 + q, 4 + hi), i);
      acc += av * bv;
    }
    // the tensor cores truncate the accumulated sum to fp32 (round toward zero), which is what makes
    // long chains of products into one accumulator drift (Tf32::mma_big_rn); model it once per instruction
    float r = static_cast<float>(acc);
    if (std::fabs(static_cast<double>(r)) > std::fabs(acc)) r = std::nextafter(r, 0.f);
    out[e] = r;
  }
  ::attncore::emu::warp_sync();  // every lane has read the operands before the scratch is reused
  for (int e = 0; e < 4; ++e) c[e] = out[e];
}

template <typename T>
inline void emu_mma(float* c, const uint32_t* a, const uint32_t* b) {
  emu_mma_e<2>(c, a, b, half_of<T>);
}

inline void emu_ldmatrix(uint32_t* r, const void* p, bool trans) {
  ::attncore::emu::publish(&p, sizeof(p));
  const int lane = threadIdx.x % 32;
  auto row = [](int src) {
    const unsigned char* q;
    std::memcpy(&q, ::attncore::emu::lane_slot(src), sizeof(q));
    return q;
  };
  for (int j = 0; j < 4; ++j) {
    if (!trans) {
      std::memcpy(&r[j], row(j * 8 + lane / 4) + 4 * (lane % 4), 4);
    } else {
      uint16_t lo, hi;
      std::memcpy(&lo, row(j * 8 + 2 * (lane % 4)) + 2 * (lane / 4), 2);
      std::memcpy(&hi, row(j * 8 + 2 * (lane % 4) + 1) + 2 * (lane / 4), 2);
      r[j] = static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
    }
  }
  ::attncore::emu::warp_sync();
}

// mma.m16n8k8 with tf32 operands: float bits of which the tensor cores read the 19 high ones (sign, exponent,
// 10 mantissa bits) and ignore the 13 low ones (Tf32::split relies on it).
inline void emu_mma_tf32(float* c, const uint32_t* a, const uint32_t* b) {
  emu_mma_e<1>(c, a, b, [](uint32_t u, int) {
    u &= 0xffffe000u;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  });
}
#endif

// fp32 products on tensor cores at fp32 accuracy ("3xTF32"): each operand x = big + small, both tf32
// (10-bit mantissas), and a b = a_small b_big + a_big b_small + a_big b_big (a_small b_small, below
// fp32's rounding, is dropped; Tf32::mma_big_rn says how the sums avoid the tensor cores' truncation). mma.m16n8k8 fragment layouts (g = lane / 4, t = lane % 4):
//   A (16 x 8)  a0: (g, t)  a1: (g+8, t)  a2: (g, t+4)  a3: (g+8, t+4)
//   B (8 x 8)   b0: (k t, n g)  b1: (k t+4, n g)
//   C           as for m16n8k16 (c0,c1: (g, 2t..2t+1), c2,c3: (g+8, 2t..2t+1))
struct Tf32 {
  static __host__ __device__ __forceinline__ uint32_t bits(float x) {
#if defined(ATTNCORE_EMULATE) || !defined(__CUDA_ARCH__)
    uint32_t u;
    std::memcpy(&u, &x, 4);
    return u;
#else
    return __float_as_uint(x);
#endif
  }
  // x = big + small, both tf32 values. big is x rounded to tf32 in integer arithmetic (add half a tf32 ulp,
  // 0x1000, to the bits and clear the 13 low ones), small = x - big, exact, left with its low bits: the
  // tensor cores ignore an operand's 13 low bits, so they truncate small, an error below 2^-10 of small
  // (about 2^-22 of x), the order of the dropped a_small b_small term. 3 instructions per element: sm_80/sm_90 have
  // no cvt.rna.tf32 instruction (ptxas expands each conversion into 3-4 instructions with an inf/NaN test,
  // and a split took two), and Veltkamp's float split (big = c - (c - x), c = 8193 x) took 5 and cost 5-15%
  // of the fp32 kernels' speed. NaN and inf reach the result through small: the integer rounding of big
  // carries CUDA's NaN 0x7fffffff into the sign bit (big = -0), but x - big is NaN for a NaN x, and
  // inf - inf is NaN for an infinite one; the products then give NaN. x within half a tf32 ulp of FLT_MAX
  // rounds big to inf, and small = x - inf = -inf makes the product NaN. The split is exact for every finite
  // x, but for |x| below about 2^-114 small is subnormal and the truncation keeps only multiples of 2^-136:
  // an absolute error below 2^-136 (the tf32 small part of such x had it with the conversion too).
  // Host-callable, so that tools/tf32_check.cu compares the GPU's bits with the host arithmetic the CPU
  // emulation runs (a subtraction of two floats: nothing for a host compiler to contract).
  static __host__ __device__ __forceinline__ void split(float x, uint32_t* big, uint32_t* small) {
    const uint32_t b = (bits(x) + 0x1000u) & 0xffffe000u;
#if defined(ATTNCORE_EMULATE) || !defined(__CUDA_ARCH__)
    float bf;
    std::memcpy(&bf, &b, 4);
    const float r = x - bf;
#else
    const float r = __fsub_rn(x, __uint_as_float(b));
#endif
    *big = b;
    *small = bits(r);
  }
  static __device__ __forceinline__ void mma(float* c, const uint32_t* a, const uint32_t* b) {
#if defined(ATTNCORE_EMULATE)
    emu_mma_tf32(c, a, b);
#elif ATTNCORE_TC
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
  }
  // a b at fp32 accuracy from the split operands is a_big b_big + (a_small b_big + a_big b_small). The tensor
  // cores add in fp32 but truncate, so a long chain of products into one accumulator drifts toward zero by
  // about one ulp of the accumulator per step. The big product therefore starts from zero at every 8-wide
  // step (its 8 products summed and truncated once) and is added to the accumulator in round-to-nearest
  // fp32 (as Ootomo and Yokota, 2022, recover SGEMM accuracy): mma_big_rn. The small products are about
  // 2^-11 of the total, so their own chain may truncate (the drift stays far below fp32's rounding of the
  // total): mma_small chains them into a temporary that the caller adds once per run of steps. Per step,
  // 3 mmas and 4 adds, plus 4 per chain (the first version added each step's small products too: 8 per step).
  static __device__ __forceinline__ void mma_big_rn(float* acc, const uint32_t* a_big, const uint32_t* b_big) {
#if defined(ATTNCORE_EMULATE) || !ATTNCORE_TC
    float u[4] = {0.f, 0.f, 0.f, 0.f};
    mma(u, a_big, b_big);
    for (int e = 0; e < 4; ++e) acc[e] += u[e];
#else
    // one block with its own zeroed temporaries: written as separate statements, the compiler hoisted every
    // step's zero initialization to the top of the unrolled loop and spilled (D = 128, sm_90)
    asm volatile(
        "{\n .reg .f32 u0, u1, u2, u3;\n"
        " mov.f32 u0, 0f00000000;\n mov.f32 u1, 0f00000000;\n mov.f32 u2, 0f00000000;\n mov.f32 u3, 0f00000000;\n"
        " mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {u0,u1,u2,u3}, {%4,%5,%6,%7}, {%8,%9}, {u0,u1,u2,u3};\n"
        " add.rn.f32 %0, %0, u0;\n add.rn.f32 %1, %1, u1;\n add.rn.f32 %2, %2, u2;\n add.rn.f32 %3, %3, u3;\n}\n"
        : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
        : "r"(a_big[0]), "r"(a_big[1]), "r"(a_big[2]), "r"(a_big[3]), "r"(b_big[0]), "r"(b_big[1]));
#endif
  }
  static __device__ __forceinline__ void mma_small(float* t, const uint32_t* a_big, const uint32_t* a_small, const uint32_t* b_big,
                                                   const uint32_t* b_small) {
    mma(t, a_small, b_big);
    mma(t, a_big, b_small);
  }
};

// The two fp32 (3xTF32) products every tensor-core kernel is made of, for one warp; gr = lane / 4,
// tq = lane % 4, shared-memory tiles of pitch LD floats (LD = D + 4 keeps the fragment reads below in
// distinct banks: word offsets 4 gr + tq, and 8 tq + gr).
//
// C (16 x N) += A B^T over columns [0, D): A's 16 rows and B's N rows in shared memory, split on the fly
// (S = Q K^T in the forward; S^T = K Q^T, dP^T = V dO^T, S = Q K^T and dP = dO V^T in the backward).
// The small products chain over the whole contraction in one temporary per output tile (Tf32::mma_small)
// where N <= 32; wider products (the 64-row steps at D = 64) add them at every step instead, as the
// temporaries' 4 N / 8 registers made those kernels spill.
//
// Both take B through a loader, load(chunk, tile, bb, bs), which yields the big and small tf32 parts of the
// two B elements this thread multiplies at contraction chunk `chunk` (8 wide) and output tile `tile`:
// SplitRowsB / SplitFragB below read plain floats from shared memory and split them here, the pre-split
// tiles of tf32_tiles.cuh read both parts with one 16-byte load. A loader decides where the parts come
// from, not the sums or their order, so every loader gives the same bits.
template <int D, int N, int LDA, int MT, class BLoad>
__device__ __forceinline__ void tf32_rows_with(float (&c)[MT][N / 8][4], const float* A, const BLoad& load_b, int gr, int tq) {
  constexpr bool kChain = N <= 32;
  float t[MT][kChain ? N / 8 : 1][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int nt = 0; nt < (kChain ? N / 8 : 1); ++nt) t[mt][nt][0] = t[mt][nt][1] = t[mt][nt][2] = t[mt][nt][3] = 0.f;
  }
  constexpr int kUnroll = MT == 1 ? 2 : 1;  // two m-tiles: the next step's loads would need registers the products hold
#pragma unroll kUnroll
  for (int kk = 0; kk < D / 8; ++kk) {
    uint32_t ab[MT][4], as[MT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      const float* pa = A + (mt * 16 + gr) * LDA + kk * 8 + tq;
      Tf32::split(pa[0], &ab[mt][0], &as[mt][0]);
      Tf32::split(pa[8 * LDA], &ab[mt][1], &as[mt][1]);
      Tf32::split(pa[4], &ab[mt][2], &as[mt][2]);
      Tf32::split(pa[8 * LDA + 4], &ab[mt][3], &as[mt][3]);
    }
#pragma unroll
    for (int nt = 0; nt < N / 8; ++nt) {
      uint32_t bb[2], bs[2];
      load_b(kk, nt, bb, bs);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        Tf32::mma_big_rn(c[mt][nt], ab[mt], bb);
        if constexpr (kChain) {
          Tf32::mma_small(t[mt][nt], ab[mt], as[mt], bb, bs);
        } else {
          float u[4] = {0.f, 0.f, 0.f, 0.f};
          Tf32::mma_small(u, ab[mt], as[mt], bb, bs);
#pragma unroll
          for (int e = 0; e < 4; ++e) c[mt][nt][e] += u[e];
        }
      }
    }
  }
  if constexpr (kChain) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
      for (int nt = 0; nt < N / 8; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) c[mt][nt][e] += t[mt][nt][e];
      }
    }
  }
}
template <int D, int N, int LDA, class BLoad>
__device__ __forceinline__ void tf32_rows_with(float (&c)[N / 8][4], const float* A, const BLoad& load_b, int gr, int tq) {
  tf32_rows_with<D, N, LDA, 1>(reinterpret_cast<float(&)[1][N / 8][4]>(c), A, load_b, gr, tq);
}

// B's rows in shared memory (pitch LD), row nt * 8 + gr, columns kk * 8 + tq and + 4: B^T's fragment.
template <int LD>
struct SplitRowsB {
  const float* B;
  int gr, tq;
  __device__ __forceinline__ void operator()(int kk, int nt, uint32_t (&bb)[2], uint32_t (&bs)[2]) const {
    const float* pb = B + (nt * 8 + gr) * LD + kk * 8 + tq;
    Tf32::split(pb[0], &bb[0], &bs[0]);
    Tf32::split(pb[4], &bb[1], &bs[1]);
  }
};

template <int D, int N, int LD>
__device__ __forceinline__ void tf32_rows_rows(float (&c)[N / 8][4], const float* A, const float* B, int gr, int tq) {
  tf32_rows_with<D, N, LD>(c, A, SplitRowsB<LD>{B, gr, tq}, gr, tq);
}

// C (16 x D) += P B: P (16 x N) in the C fragments a product left it in, B's N rows in shared memory
// (O += P V in the forward; dV += P^T dO, dK += dS^T Q and dQ += dS K in the backward). This thread
// holds columns 2 tq and 2 tq + 1 of each 8-column chunk of P, which become the A fragment's k = tq and
// k = tq + 4 (the contraction order within a chunk is free, as long as B's rows follow: b0 = B[2 tq],
// b1 = B[2 tq + 1]). P's chunks are split KG_ at a time, so that each output tile's small products chain
// over KG_ chunks in one 4-register temporary (Tf32::mma_small) instead of one per output tile. KG_ = 0:
// up to 4, 2 for 64-row steps (the D = 64 forward). The D = 64 backward's two kernels pass 1: with 2 its
// dK/dV kernel spilled 280 bytes (sm_90), with 1 it spills 20, and the pair ran 3-7% faster (H200, 2026-12-01).
template <int D, int N, int KG_, int MT, class BLoad>
__device__ __forceinline__ void tf32_frag_with(float (&c)[MT][D / 8][4], const float (&pf)[MT][N / 8][4], const BLoad& load_b) {
  constexpr int KG = KG_ > 0 ? KG_ : (N / 8 < 4 ? N / 8 : (N >= 64 ? 2 : 4));
  static_assert((N / 8) % KG == 0, "chunk groups");
#pragma unroll
  for (int k0 = 0; k0 < N / 8; k0 += KG) {
    uint32_t ab[MT][KG][4], as[MT][KG][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
      for (int j = 0; j < KG; ++j) {
        Tf32::split(pf[mt][k0 + j][0], &ab[mt][j][0], &as[mt][j][0]);
        Tf32::split(pf[mt][k0 + j][2], &ab[mt][j][1], &as[mt][j][1]);
        Tf32::split(pf[mt][k0 + j][1], &ab[mt][j][2], &as[mt][j][2]);
        Tf32::split(pf[mt][k0 + j][3], &ab[mt][j][3], &as[mt][j][3]);
      }
    }
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) {
      float t[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) t[mt][0] = t[mt][1] = t[mt][2] = t[mt][3] = 0.f;
#pragma unroll
      for (int j = 0; j < KG; ++j) {
        uint32_t bb[2], bs[2];
        load_b(k0 + j, dt, bb, bs);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          Tf32::mma_big_rn(c[mt][dt], ab[mt][j], bb);
          Tf32::mma_small(t[mt], ab[mt][j], as[mt][j], bb, bs);
        }
      }
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) c[mt][dt][e] += t[mt][e];
      }
    }
  }
}
template <int D, int N, int KG_, class BLoad>
__device__ __forceinline__ void tf32_frag_with(float (&c)[D / 8][4], const float (&pf)[N / 8][4], const BLoad& load_b) {
  tf32_frag_with<D, N, KG_, 1>(reinterpret_cast<float(&)[1][D / 8][4]>(c), reinterpret_cast<const float(&)[1][N / 8][4]>(pf), load_b);
}

// B's rows in shared memory (pitch LD): rows kc * 8 + 2 tq and + 1, column dt * 8 + gr.
template <int LD>
struct SplitFragB {
  const float* B;
  int gr, tq;
  __device__ __forceinline__ void operator()(int kc, int dt, uint32_t (&bb)[2], uint32_t (&bs)[2]) const {
    const float* pb = B + (kc * 8 + 2 * tq) * LD + gr + dt * 8;
    Tf32::split(pb[0], &bb[0], &bs[0]);
    Tf32::split(pb[LD], &bb[1], &bs[1]);
  }
};

template <int D, int N, int LD, int KG_ = 0>
__device__ __forceinline__ void tf32_frag_rows(float (&c)[D / 8][4], const float (&pf)[N / 8][4], const float* B, int gr, int tq) {
  tf32_frag_with<D, N, KG_>(c, pf, SplitFragB<LD>{B, gr, tq});
}

template <typename T>
struct Mma;

template <>
struct Mma<__half> {
  static __device__ __forceinline__ void run(float* c, const uint32_t* a, const uint32_t* b) {
#if defined(ATTNCORE_EMULATE)
    emu_mma<__half>(c, a, b);
#elif ATTNCORE_TC
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
  }
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
};

template <>
struct Mma<__nv_bfloat16> {
  static __device__ __forceinline__ void run(float* c, const uint32_t* a, const uint32_t* b) {
#if defined(ATTNCORE_EMULATE)
    emu_mma<__nv_bfloat16>(c, a, b);
#elif ATTNCORE_TC
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
  }
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
#if ATTNCORE_TC
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
#else
    return 0u;
#endif
  }
};

// 2^x on the special function unit (max relative error 2^-22; flushes denormal results to 0).
__device__ __forceinline__ float fast_exp2(float x) {
#ifdef ATTNCORE_EMULATE
  return exp2f(x);
#else
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#endif
}

#ifdef ATTNCORE_EMULATE  // offsets into the block's dynamic shared memory stand in for the shared window
inline uint32_t smem_addr(const void* p) { return static_cast<uint32_t>(static_cast<const unsigned char*>(p) - ::attncore::emu::self.dyn_smem); }
#else
__device__ __forceinline__ uint32_t smem_addr(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }
#endif

// ldmatrix x4 (kTrans: .trans), four 8x8 b16 matrices, on a 32-bit shared address (smem_addr; base +
// constant offsets fold into the instruction); lane l gives the address of row (l % 8) of matrix (l / 8).
template <bool kTrans>
__device__ __forceinline__ void ldsm(uint32_t* r, uint32_t addr) {
#if defined(ATTNCORE_EMULATE)
  emu_ldmatrix(r, ::attncore::emu::self.dyn_smem + addr, kTrans);
#elif ATTNCORE_TC
  if constexpr (kTrans) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
  } else {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
  }
#endif
}

// Byte offsets (within a [rows][LD] tile of 2-byte elements) that lane `lane` passes to ldmatrix:
//   a_off: A fragment of rows [0, 16) x columns [0, 16) (add 16-row / 16-column steps);
//   b_off: B fragments of two n-tiles (rows [0, 16) are n, columns [0, 16) are k), plain ldmatrix:
//          regs 0-1 for n-tile rows 0-7, regs 2-3 for rows 8-15;
//   t_off: B fragments of two n-tiles from a [k][n] tile (rows [0, 16) are k, columns [0, 16) are n),
//          transposing ldmatrix: regs 0-1 for columns 0-7, regs 2-3 for columns 8-15.
template <int LD>
__device__ __forceinline__ uint32_t a_off(int lane) { return ((lane % 16) * LD + (lane / 16) * 8) * 2; }
template <int LD>
__device__ __forceinline__ uint32_t b_off(int lane) { return ((lane % 8 + (lane / 16) * 8) * LD + ((lane / 8) % 2) * 8) * 2; }
template <int LD>
__device__ __forceinline__ uint32_t t_off(int lane) { return ((lane % 8 + ((lane / 8) % 2) * 8) * LD + (lane / 16) * 8) * 2; }

// The A fragment of a 16 x 16 tile from the C fragments of its two 16 x 8 halves (rounded to T).
template <typename T>
__device__ __forceinline__ void c_to_a(uint32_t* a, const float* lo, const float* hi) {
  a[0] = Mma<T>::pack(lo[0], lo[1]);
  a[1] = Mma<T>::pack(lo[2], lo[3]);
  a[2] = Mma<T>::pack(hi[0], hi[1]);
  a[3] = Mma<T>::pack(hi[2], hi[3]);
}

// The same two products as tf32_rows_rows and tf32_frag_rows for fp16/bf16 (m16n8k16, fragments by
// ldmatrix from tiles of pitch LD elements), one warp:
//
// C (16 x N) += A B^T over columns [0, D): A's fragments from registers (af, loaded once by the caller)
// or by ldmatrix at sA (the warp's 16 rows plus a_off), B's N rows at sB (the tile plus b_off).
template <typename T, int D, int N, int LD, bool kARegs>
__device__ __forceinline__ void h16_rows_rows_from(float (&c)[N / 8][4], const uint32_t (*af)[4], uint32_t sA, uint32_t sB) {
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    uint32_t a_tmp[4];
    const uint32_t* a = a_tmp;
    if constexpr (kARegs) {
      a = af[kk];
    } else {
      ldsm<false>(a_tmp, sA + kk * 32);
    }
#pragma unroll
    for (int np = 0; np < N / 16; ++np) {
      uint32_t b[4];
      ldsm<false>(b, sB + np * 16 * LD * 2 + kk * 32);
      Mma<T>::run(c[2 * np], a, b);
      Mma<T>::run(c[2 * np + 1], a, b + 2);
    }
  }
}
template <typename T, int D, int N, int LD>
__device__ __forceinline__ void h16_rows_rows(float (&c)[N / 8][4], uint32_t sA, uint32_t sB) {
  h16_rows_rows_from<T, D, N, LD, false>(c, nullptr, sA, sB);
}
template <typename T, int D, int N, int LD>
__device__ __forceinline__ void h16_rows_rows(float (&c)[N / 8][4], const uint32_t (&af)[D / 16][4], uint32_t sB) {
  h16_rows_rows_from<T, D, N, LD, true>(c, af, 0u, sB);
}

// C (16 x D) += P B: P (16 x N) in the C fragments a product left it in (rounded to T as the A operand:
// two 16 x 8 C tiles side by side are one A fragment), B's N rows at sB (the tile plus t_off, transposing
// ldmatrix).
template <typename T, int D, int N, int LD>
__device__ __forceinline__ void h16_frag_rows(float (&c)[D / 8][4], const float (&pf)[N / 8][4], uint32_t sB) {
#pragma unroll
  for (int kc = 0; kc < N / 16; ++kc) {
    uint32_t a[4];
    c_to_a<T>(a, pf[2 * kc], pf[2 * kc + 1]);
#pragma unroll
    for (int dn = 0; dn < D / 16; ++dn) {
      uint32_t b[4];
      ldsm<true>(b, sB + kc * 16 * LD * 2 + dn * 32);
      Mma<T>::run(c[2 * dn], a, b);
      Mma<T>::run(c[2 * dn + 1], a, b + 2);
    }
  }
}

// 16 bytes global -> shared, zero-filled when !valid (no global read then).
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, bool valid) {
#if defined(ATTNCORE_EMULATE)  // synchronous: the emulation has nothing to overlap
  if (valid) {
    std::memcpy(dst, src, 16);
  } else {
    std::memset(dst, 0, 16);
  }
#elif ATTNCORE_TC
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(valid ? 16 : 0));
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if ATTNCORE_TC && !defined(ATTNCORE_EMULATE)
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if ATTNCORE_TC && !defined(ATTNCORE_EMULATE)
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

// Rows [row0, row0 + ROWS) of a [B, M, G, H, *] view into shared memory [ROWS][LD] (columns [0, COLS)).
// Rows at or past `nrows` and columns at or past `ncols` are zero. The row address is computed once and
// each thread keeps one column chunk, so a tile costs a few instructions per 16 bytes. With `vec` the copy
// is asynchronous (cp.async, 16 bytes per thread and row; wait with cp_async_wait), else synchronous
// element loads.
template <typename T, int ROWS, int COLS, int LD, int THREADS>
__device__ __forceinline__ void load_rows(T* dst, const void* base, const int64_t* st, int b, int row0, int g, int h, int nrows, int ncols,
                                          bool vec) {
  const T* src = row_ptr<T>(base, st, b, row0, g, h);
  const int64_t rs = st[1];
  if (vec) {
    constexpr int E = 16 / static_cast<int>(sizeof(T));  // elements per 16-byte chunk
    constexpr int CH = COLS / E;                            // chunks per row
    constexpr int STEP = THREADS / CH;                      // rows per pass
    static_assert(COLS % E == 0 && THREADS % CH == 0 && ROWS % STEP == 0, "copy plan");
    const int r0 = threadIdx.x / CH, c = (threadIdx.x % CH) * E;
    const bool cok = c < ncols;
#pragma unroll
    for (int k = 0; k < ROWS / STEP; ++k) {
      const int r = r0 + k * STEP;
      const bool ok = cok && r < nrows;
      cp_async_16(dst + r * LD + c, ok ? src + r * rs + c : reinterpret_cast<const T*>(base), ok);
    }
  } else {
    for (int e = threadIdx.x; e < ROWS * COLS; e += THREADS) {
      const int r = e / COLS, c = e % COLS;
      T x = from_float<T>(0.f);
      if (r < nrows && c < ncols) x = src[r * rs + c];
      dst[r * LD + c] = x;
    }
  }
}

// One row of a warp's C fragments to global memory: columns 8 dt + 2 tq and 8 dt + 2 tq + 1 of `acc`'s
// row half hr (0: rows g, 1: rows g + 8), times `mul`, into `row` (element type U) below column
// `ncols`. Both columns of a pair go in one 32-bit store (fp32: 64-bit) where the row is aligned for it
// (tested once: every pair starts at an even column).
template <typename U, int D>
__device__ __forceinline__ void store_row(U* row, int ncols, const float (&acc)[D / 8][4], int hr, int tq, float mul) {
  const bool paired = (reinterpret_cast<uintptr_t>(row) & (2 * sizeof(U) - 1)) == 0;
#pragma unroll
  for (int dt = 0; dt < D / 8; ++dt) {
    const int col = dt * 8 + 2 * tq;
    const float a = acc[dt][2 * hr] * mul, b = acc[dt][2 * hr + 1] * mul;
    if (paired && col + 1 < ncols) {
      if constexpr (sizeof(U) == 4) {
        *reinterpret_cast<float2*>(row + col) = make_float2(a, b);
      } else {
        *reinterpret_cast<uint32_t*>(row + col) = Mma<U>::pack(a, b);
      }
    } else {
      if (col < ncols) row[col] = from_float<U>(a);
      if (col + 1 < ncols) row[col + 1] = from_float<U>(b);
    }
  }
}

// The same row added atomically into float memory (another CTA may add to it at the same time): float2
// atomics on sm_90 where the address allows, else one float at a time. The sum's order, and so its last
// bits, depend on timing.
template <int D>
__device__ __forceinline__ void add_row(float* row, int ncols, const float (&acc)[D / 8][4], int hr, int tq, float mul) {
  const bool paired = (reinterpret_cast<uintptr_t>(row) & 7) == 0;
#pragma unroll
  for (int dt = 0; dt < D / 8; ++dt) {
    const int col = dt * 8 + 2 * tq;
    const float a = acc[dt][2 * hr] * mul, b = acc[dt][2 * hr + 1] * mul;
#if defined(ATTNCORE_EMULATE)
    (void)paired;
    if (col < ncols) std::atomic_ref<float>(row[col]).fetch_add(a);
    if (col + 1 < ncols) std::atomic_ref<float>(row[col + 1]).fetch_add(b);
#else
#if __CUDA_ARCH__ >= 900
    if (paired && col + 1 < ncols) {
      atomicAdd(reinterpret_cast<float2*>(row + col), make_float2(a, b));
      continue;
    }
#else
    (void)paired;
#endif
    if (col < ncols) atomicAdd(row + col, a);
    if (col + 1 < ncols) atomicAdd(row + col + 1, b);
#endif
  }
}

}  // namespace tc
}  // namespace attncore
