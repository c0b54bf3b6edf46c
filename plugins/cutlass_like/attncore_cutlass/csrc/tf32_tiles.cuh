// fp32 key and value tiles split into tf32 parts once per CTA (the "pre-split" fp32 forward).
//
// The 3xTF32 products (mma.cuh, Tf32) split every operand element into big + small before each mma. With
// K and V tiles in shared memory as plain floats, every warp splits every element of each tile again: at
// D = 128 with 32-key tiles, 256 of a warp's 336 splits per tile (3 integer/float instructions each, a
// dependent chain) and two 4-byte loads per fragment. Here the CTA's threads split each element once, on its
// way from global memory (the next tile's loads go to registers while the current tile is multiplied), and
// store big and small side by side in the order a fragment reads them: one 16-byte load gives a thread
// both tf32 parts of both elements of its B fragment (b0, b1), and the split instructions leave the
// multiply loops. The products sum in the same order as tc::tf32_rows_rows and tc::tf32_frag_rows, so the
// results are the same bits. Measured slower than splitting in every warp (an opt-in; fwd_tc.cu's
// fp32_fwd_split, benchmarks/RESULTS.md): each 16-byte fragment load waits right before its mmas.
//
// Layouts, in 32-bit words (g = lane / 4, t = lane % 4; "slot" = 4 words, 16 bytes):
//   K tile [BN keys][D columns]: row r at r * KP (KP = 2 D + 16); columns 8 kk + t and 8 kk + t + 4 (the
//     b0 and b1 of step kk) share the slot at r * KP + 16 kk + 4 (t ^ (kk & 3)): {big, small} of column
//     8 kk + t, then of 8 kk + t + 4.
//   V tile [BN keys][D columns], keys in pairs (the P V product's k index t is key 2 t, t + 4 is key
//     2 t + 1; tf32_frag_rows): pair pr (keys 2 pr, 2 pr + 1), column n at pr * VP + 4 vperm(n)
//     (VP = 4 D + 4): {big, small} of V[2 pr][n], then of V[2 pr + 1][n]. vperm puts a group of 8
//     columns' even ones first: n -> (n & ~7) | (n & 1) << 2 | (n >> 1 & 3).
// Bank check (16-byte accesses go in quarter-warps: 8 lanes, 8 distinct 16-byte slots mod 128 bytes needed):
//   K reads, lanes g in {2q, 2q + 1}, t 0..3: slot mod 8 = 4 (g & 1) + (t ^ (kk & 3)), distinct.
//   K writes (store_k_tile's task order below: kk & 3 and row & 1 vary inside a quarter): for a fixed t
//     written, slot mod 8 = 4 ((row + kk) & 1) + (t ^ (kk & 3)), distinct.
//   V reads, pr = 4 j + t, n = 8 dt + g: slot mod 8 = (pr + vperm(n)) mod 8 = t + q + 4 (g & 1), distinct.
//   V writes (8 consecutive pairs, one column): slot mod 8 = (pr + vperm(n)) mod 8, distinct.
#pragma once

#include "common.cuh"
#include "mma.cuh"

namespace attncore {
namespace tc {

template <int D>
__host__ __device__ constexpr int ksplit_pitch() {
  return 2 * D + 16;
}
template <int D>
__host__ __device__ constexpr int vsplit_pitch() {
  return 4 * D + 4;
}
template <int D, int BN>
__host__ __device__ constexpr int ksplit_words() {
  return BN * ksplit_pitch<D>();
}
template <int D, int BN>
__host__ __device__ constexpr int vsplit_words() {
  return BN / 2 * vsplit_pitch<D>();
}
__host__ __device__ constexpr int vperm(int n) {
  return (n & ~7) | (n & 1) << 2 | (n >> 1 & 3);
}

// One K or V tile in registers on its way to shared memory: this thread's kTasks tasks of 8 floats.
//   K task (row, kk): row `row`, columns 8 kk .. 8 kk + 7. Thread x takes kk = (x & 3) + 4 ((x >> 3) % (D / 32)),
//     row = ((x >> 2) & 1) + 2 ((x >> 3) / (D / 32)) + i kRowStep for i < kTasks: inside each group of 8
//     threads, kk & 3 and row & 1 vary (conflict-free stores, see above), and a warp covers two whole rows
//     (coalesced loads).
//   V task (pr, cg): rows 2 pr and 2 pr + 1, columns 4 cg .. 4 cg + 3. Thread x takes pr = x % (BN / 2),
//     cg = x / (BN / 2) + i kGroupStep: 8 consecutive threads take 8 consecutive key pairs of one column group.
// The per-task part of each address is a constant (i times a step), so the loads and stores of a tile
// need one address computation per thread.
template <int D, int BN, int THREADS>
struct Staged {
  static constexpr int kTasks = BN * D / 8 / THREADS;
  static constexpr int kRowStep = THREADS / (D / 8);
  static constexpr int kGroupStep = THREADS / (BN / 2);
  static_assert(BN * D / 8 % THREADS == 0 && D % 32 == 0 && BN % 16 == 0 && THREADS % (D / 4) == 0 && THREADS % (BN / 2) == 0,
                "task plan");
  float x[kTasks][8];
};
template <int D>
__host__ __device__ __forceinline__ void k_task(int x, int* row, int* kk) {
  constexpr int KH = D / 32;  // groups of 4 steps per row
  *kk = (x & 3) + 4 * ((x >> 3) % KH);
  *row = ((x >> 2) & 1) + 2 * ((x >> 3) / KH);
}
template <int BN>
__host__ __device__ __forceinline__ void v_task(int x, int* pr, int* cg) {
  *pr = x % (BN / 2);
  *cg = x / (BN / 2);
}

// 4 consecutive floats (one 16-byte load with vec, else 4 element loads) at `src` into x[at..], zeros
// unless `ok` (the row inside the tile) and column c + e < ncols. With vec, ncols % 4 == 0.
__device__ __forceinline__ void load4(float (&x)[8], int at, const float* src, bool ok, int c, int ncols, bool vec) {
  if (vec) {
    float4 f = make_float4(0.f, 0.f, 0.f, 0.f);
    if (ok && c < ncols) f = *reinterpret_cast<const float4*>(src);
    x[at] = f.x;
    x[at + 1] = f.y;
    x[at + 2] = f.z;
    x[at + 3] = f.w;
  } else {
#pragma unroll
    for (int e = 0; e < 4; ++e) x[at + e] = ok && c + e < ncols ? src[e] : 0.f;
  }
}

// The K tile of rows [row0, row0 + BN) into registers (global loads in flight until store_k_split reads
// them); rows at or past nrows and columns at or past K are zero.
template <int D, int BN, int THREADS>
__device__ __forceinline__ void load_k_stage(Staged<D, BN, THREADS>& st, const Params& p, const Seq& sq, int g, int h, int row0, int nrows,
                                             bool vec) {
  using S = Staged<D, BN, THREADS>;
  int row, kk;
  k_task<D>(threadIdx.x, &row, &kk);
  const int64_t rs = p.k_s[1];
  const float* src = row_ptr<float>(p.k, p.k_s, sq.b, sq.k0 + row0 + row, g, h) + 8 * kk;
#pragma unroll
  for (int i = 0; i < S::kTasks; ++i) {
    const bool ok = row + i * S::kRowStep < nrows;
    const float* at = src + i * S::kRowStep * rs;
    load4(st.x[i], 0, at, ok, 8 * kk, p.K, vec);
    load4(st.x[i], 4, at + 4, ok, 8 * kk + 4, p.K, vec);
  }
}
// The same for the V tile (columns at or past Kv zero).
template <int D, int BN, int THREADS>
__device__ __forceinline__ void load_v_stage(Staged<D, BN, THREADS>& st, const Params& p, const Seq& sq, int g, int h, int row0, int nrows,
                                             bool vec) {
  using S = Staged<D, BN, THREADS>;
  int pr, cg;
  v_task<BN>(threadIdx.x, &pr, &cg);
  const int64_t rs = p.v_s[1];
  const float* src = row_ptr<float>(p.v, p.v_s, sq.b, sq.k0 + row0 + 2 * pr, g, h) + 4 * cg;
  const bool ok0 = 2 * pr < nrows, ok1 = 2 * pr + 1 < nrows;
#pragma unroll
  for (int i = 0; i < S::kTasks; ++i) {
    const int c = 4 * (cg + i * S::kGroupStep);
    load4(st.x[i], 0, src + 4 * i * S::kGroupStep, ok0, c, p.Kv, vec);
    load4(st.x[i], 4, src + rs + 4 * i * S::kGroupStep, ok1, c, p.Kv, vec);
  }
}

// A staged K tile into shared memory, split (ksplit_words words at Ks; the layout above).
template <int D, int BN, int THREADS>
__device__ __forceinline__ void store_k_split(const Staged<D, BN, THREADS>& st, uint32_t* Ks) {
  using S = Staged<D, BN, THREADS>;
  int row, kk;
  k_task<D>(threadIdx.x, &row, &kk);
  uint32_t* dst = Ks + row * ksplit_pitch<D>() + 16 * kk;
  const int sw = kk & 3;
#pragma unroll
  for (int i = 0; i < S::kTasks; ++i) {
#pragma unroll
    for (int tq = 0; tq < 4; ++tq) {
      uint4 w;
      Tf32::split(st.x[i][tq], &w.x, &w.y);
      Tf32::split(st.x[i][tq + 4], &w.z, &w.w);
      *reinterpret_cast<uint4*>(dst + i * S::kRowStep * ksplit_pitch<D>() + 4 * (tq ^ sw)) = w;
    }
  }
}
// A staged V tile into shared memory, split (vsplit_words words at Vs).
template <int D, int BN, int THREADS>
__device__ __forceinline__ void store_v_split(const Staged<D, BN, THREADS>& st, uint32_t* Vs) {
  using S = Staged<D, BN, THREADS>;
  int pr, cg;
  v_task<BN>(threadIdx.x, &pr, &cg);
  // vperm acts on disjoint bits: vperm(4 cg + 4 i kGroupStep + e) = vperm(4 cg) + vperm(4 i kGroupStep + e)
  uint32_t* dst = Vs + pr * vsplit_pitch<D>() + 4 * vperm(4 * cg);
#pragma unroll
  for (int i = 0; i < S::kTasks; ++i) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      uint4 w;
      Tf32::split(st.x[i][e], &w.x, &w.y);
      Tf32::split(st.x[i][4 + e], &w.z, &w.w);
      *reinterpret_cast<uint4*>(dst + 4 * (vperm(4 * i * S::kGroupStep + e))) = w;
    }
  }
}

// The pre-split K tile as tc::tf32_rows_with's B (its first N rows): chunk kk of row nt * 8 + gr, both
// parts in one 16-byte slot.
template <int D>
struct PresplitRowsB {
  const uint32_t* kb;  // Ks + gr * ksplit_pitch<D>()
  int tq;
  __device__ __forceinline__ void operator()(int kk, int nt, uint32_t (&bb)[2], uint32_t (&bs)[2]) const {
    const uint4 w = *reinterpret_cast<const uint4*>(kb + 16 * kk + 4 * (tq ^ (kk & 3)) + nt * 8 * ksplit_pitch<D>());
    bb[0] = w.x, bb[1] = w.z, bs[0] = w.y, bs[1] = w.w;
  }
};

// The pre-split V tile as tc::tf32_frag_with's B: key pair 4 kc + tq, column dt * 8 + gr.
template <int D>
struct PresplitFragB {
  const uint32_t* Vs;
  int gr, tq;
  __device__ __forceinline__ void operator()(int kc, int dt, uint32_t (&bb)[2], uint32_t (&bs)[2]) const {
    const uint4 w = *reinterpret_cast<const uint4*>(Vs + (4 * kc + tq) * vsplit_pitch<D>() + 4 * vperm(dt * 8 + gr));
    bb[0] = w.x, bb[1] = w.z, bs[0] = w.y, bs[1] = w.w;
  }
};

// C (16 x N) += A B^T over columns [0, D): A's 16 rows plain floats in shared memory (pitch LDA), split as
// in tf32_rows_rows; B the pre-split K tile. Same sums in the same order as tf32_rows_rows.
template <int D, int N, int LDA>
__device__ __forceinline__ void tf32_rows_presplit(float (&c)[N / 8][4], const float* A, const uint32_t* Ks, int gr, int tq) {
  tf32_rows_with<D, N, LDA>(c, A, PresplitRowsB<D>{Ks + gr * ksplit_pitch<D>(), tq}, gr, tq);
}

// C (16 x D) += P B: P (16 x N) in the C fragments a product left it in, B the pre-split V tile. Same sums
// in the same order as tf32_frag_rows (with its default chunk groups).
template <int D, int N>
__device__ __forceinline__ void tf32_frag_presplit(float (&c)[D / 8][4], const float (&pf)[N / 8][4], const uint32_t* Vs, int gr, int tq) {
  tf32_frag_with<D, N, 0>(c, pf, PresplitFragB<D>{Vs, gr, tq});
}

}  // namespace tc
}  // namespace attncore
