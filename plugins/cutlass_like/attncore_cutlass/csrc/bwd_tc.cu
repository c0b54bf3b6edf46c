// Tensor-core backward on sm_80 and newer (mma.sync; Hopper runs it too): fp16/bf16 with m16n8k16, fp32
// as 3xTF32 with m16n8k8 (each operand split into two tf32 parts, fp32 accuracy; mma.cuh).
//
// Same semantics as bwd_simt.cu (probabilities recomputed from the forward's base-2 LSE; two kernels,
// no atomics, deterministic), FlashAttention-2 style, except that fp32 by default adds dQ atomically from
// the dK/dV CTAs (see kDQ below; torch.use_deterministic_algorithms restores the two-kernel order):
//   dkdv: one CTA of 4 warps owns 64 keys of one (sequence, group, head); each warp owns 16 of them and
//         keeps its dK and dV tiles (16 x D, fp32) in registers. The query tiles that can see the keys
//         stream through shared memory (cp.async, double buffered, with their lse2 / delta). Per warp:
//         S^T = K Q^T and dP^T = V dO^T (A: K / V rows, B: Q / dO rows by plain ldmatrix), then
//         P^T = exp2(S^T - lse2[q]) and dS^T = P^T (dP^T - delta[q]) in registers, which become the
//         A operands of dV += P^T dO and dK += dS^T Q (B: dO / Q by transposing ldmatrix); dS goes to
//         dbias. For D = 256 the two accumulators do not fit the register file together: two launches,
//         one computes dV only, the other dK (and dbias).
//   dq:   one CTA of 4 warps owns 64 queries; each warp 16 of them, dQ (16 x D, fp32) in registers. Key
//         tiles stream through shared memory (double buffered): S = Q K^T, dP = dO V^T, dS as above,
//         dQ += dS K (B: K by transposing ldmatrix).
// P and dS are rounded to the inputs' type only as MMA operands; every accumulation is fp32. The five
// products are mma.cuh's h16_* (ldmatrix fragments) or, in fp32, tf32_* (scalar fragment loads from
// tiles of pitch D + 4, split on the fly; fp32 tiles take twice the bytes, hence narrower steps). Head dims
// are padded with zeros to D (64, 128 or 256); only tiles that cross a band edge or a sequence end
// evaluate the mask per element. A tensor bias is staged per tile pair in shared memory (float, times
// log2 e, coalesced loads) next to the double-buffered operand tiles.
// Tiles and shared memory (bytes, without / with a bias): D = 64: dkdv 64 keys x 64 queries 56320 / 91136,
// dq 64 x 64 55296 / 92160; D = 128: 105472 / 140288 and 104448 / 141312; D = 256: 64 keys x 32 queries,
// dK launch 135680 / 153088, dV launch 101888 / 119296, dq 64 x 32 135168 / 155648 (all within the A100
// opt-in 163 KiB). ptxas: the D = 128 dkdv kernel spills 12 bytes for sm_90 (since its two products
// became mma.cuh's helpers; timed within 1.5% of the spill-free version) and 24 for sm_80. fp32, no bias
// / bias: D = 64, the fp16 steps, dkdv 105472 / 140288 and dq 104448 / 141312 (32-query dkdv steps,
// spill-free, were 3-6% slower non-causal, -6% to +5% causal: benchmarks/RESULTS.md); D = 128, 16-query
// and 16-key steps (+4-11% over 32-wide steps), dK and dV in one launch since the 3-instruction split (255
// registers, 12 bytes of spills, two CTAs per SM on sm_90, +16-17% over two launches that each recomputed
// P: 2026-12-01 in RESULTS.md; on sm_80 it spills 24 bytes and one such CTA fits per SM: not timed there),
// dkdv 101632 / 110336, dq 101376 / 113664; D = 256, 16 / 16, dK launch 199936 / 208640, dV launch 133376 / 142080, dq 199680 /
// 211968 (sm_90 only: on smaller shared memories the portable kernels run). Each of these D = 256 kernels
// fits one CTA, 4 warps, per multiprocessor. By default (ATTNCORE_CUTLASS_FP32_BWD_PAIRS unset or listing
// 256) paired 8-warp CTAs run instead (Dkdv::kPair), 8 warps per multiprocessor: dK and dV in one launch
// (warp w < 4 computes S^T, P^T and dV of 16 keys and hands P^T to warp w + 4 through shared memory, which
// computes dP^T, dS^T and dK of the same keys; Q and dO read and S computed once per step instead of
// twice; 204032 / 212736 bytes), and the dQ kernel with warp w computing P and warp w + 4 dP of 16 queries,
// swapped through shared memory, each accumulating half of dQ's columns (207872 / 220160 bytes): +49-55%
// over the 4-warp kernels on the H200. ptxas (sm_90, the integer split and chained small products of
// mma.cuh): fp32 spills 20 bytes at D = 64 (dkdv; 8 in dq), 12 in the D = 128 dkdv kernel, 20 in the
// D = 256 dK launch; the other fp32 kernels do not, except the paired D = 128 ones (48 bytes in dK/dV, 20 in
// dQ), held to 128 registers so that two of them fit a multiprocessor (ATTNCORE_CUTLASS_FP32_BWD_PAIRS=128,256).
// fp32 atomic dQ (kDQ; unless BwdParams::deterministic): the dQ kernel recomputes S and dP, so the two-kernel
// backward runs 7 products where 5 suffice (ncu, H200, D = 128 M = 4096: 2.82 G tensor instructions against
// SDPA efficient's 2.01 G). With kDQ each dK/dV step also puts dS into shared memory ([BM][72] floats) and
// all warps compute dS K for the step's BM queries, each a D / warps column slice (32; 16 at D = 64 and in
// paired D = 128 CTAs), added to the pre-zeroed dq with float2 atomics (sm_90; scalar on sm_80); no dQ
// launch. D = 64 takes 32-query steps then (79360 bytes with the dS tile: two CTAs per multiprocessor on
// sm_90, and the tensor cores now fit sm_86/89 there), 128 the one launch (106240 bytes, two CTAs), 256 the
// paired launch (208640); the split D = 256 launches keep the dQ kernel. ptxas (sm_90): 28, 28 and 16 bytes
// of spills. H200: fp32 backward 1.01-1.21x SDPA efficient on all 24 cells (was 0.77-0.93x).
// Serial dQ (kSerial, with kDQ; fp32 under torch's deterministic mode, BwdParams::dq_splits > 0): the same
// dK/dV CTAs, but gridDim.x = dq_splits of them per (sequence, head), CTA x taking key blocks x, x + splits, ...
// in order, each adding its dQ shares into its own zeroed slice of dq_slice floats (one slice: dq itself).
// Every dq element then receives its additions in one order (the steps of one CTA are ordered by its
// barriers), and the caller sums the slices in a fixed order: bitwise reproducible, without the dQ kernel's
// second pass over S and dP. bwd_tc_dq_splits picks the count from the occupancy (kernels.h).
#include "kernels.h"
#include "mma.cuh"

#include <algorithm>
#include <cstdlib>
#include <string>

namespace attncore {
namespace {

constexpr int kThreads = 128;
constexpr int kBN = 64;    // keys per dkdv CTA (16 per warp)
constexpr int kBMq = 64;   // queries per dq CTA (16 per warp)

// Bias tiles (float, base 2) are padded so that the fragment-order reads avoid bank conflicts.
constexpr int kLdbKV = kBN + 4;  // dkdv: [query][key], read down a column (keys vary fastest across lanes)
constexpr int kLdbQPad = 8;      // dq: [query][key], read as float2 along a row
// dS tile of a dK/dV CTA that also adds dQ (kDQ): [query][key] floats, written by the dK warps and read as
// float2 along a row as the A operand of dS K (pitch 72: the 16 lanes of a half-warp hit distinct banks)
constexpr int kLdS = kBN + 8;

// Operand tile pitch (elements): 16 bytes of padding, so the rows one fragment load touches fall in
// distinct banks (ldmatrix rows for 2-byte types; the scalar (gr, tq) loads of the tf32 products).
template <typename T, int D>
__host__ __device__ constexpr int pitch() {
  return D + 16 / static_cast<int>(sizeof(T));
}

// Paired dK/dV CTAs (kPair): 8 warps, warp w < 4 computes dV of keys [16 w, 16 w + 16) and warp w + 4 dK of the
// same keys; the first hands P^T to the second through shared memory, [4][BM / 8 * 4][32] floats (each lane's
// fragment values, lane fastest: the same lane of the partner warp reads them back).
template <int BM>
__host__ __device__ constexpr int pair_floats() {
  return 4 * (BM / 8 * 4) * 32;
}

// Paired CTAs per multiprocessor that the registers are sized for (__launch_bounds__; the unpaired kernels
// pass 0, no minimum, as before: an explicit 1 changes ptxas's allocation for them). Two at D = 128: 16 warps
// per multiprocessor at 128 registers, where ptxas spills 48 bytes in dK/dV and 20 in dQ (sm_90); the
// shared memory holds two such CTAs on sm_90 except the dQ kernel with a bias (121856 bytes: one fits, the
// register cap still applies), and one on sm_80. One at D = 256 (255 registers, no spills on sm_90 with
// the bound explicit).
template <int D>
__host__ __device__ constexpr int pair_ctas() {
  return D <= 128 ? 2 : 1;
}

// dkdv: K [kBN][LD], V [kBN][LD] (when dK is computed), Q and dO [2][BM][LD], lse2 and delta [2][BM],
// the P^T hand-off of paired CTAs, the dS tile when the CTA adds dQ, then with a bias [2][BM][kBN + 4] floats.
template <typename T, int D, int BM, bool kDK, bool kPair = false, bool kDQ = false>
constexpr int dkdv_smem_bytes(bool bias) {
  return ((kDK ? 2 : 1) * kBN + 4 * BM) * pitch<T, D>() * static_cast<int>(sizeof(T)) + 4 * BM * 4 + (kPair ? pair_floats<BM>() * 4 : 0) +
         (kDQ ? BM * kLdS * 4 : 0) + (bias ? 2 * BM * kLdbKV * 4 : 0);
}

// dq: Q and dO [kBMq][LD], K and V [2][BN][LD], the P and dP hand-offs of paired CTAs, then with a bias
// [2][kBMq][BN + 8] floats.
template <typename T, int D, int BN, bool kPair = false>
constexpr int dq_smem_bytes(bool bias) {
  return (2 * kBMq + 4 * BN) * pitch<T, D>() * static_cast<int>(sizeof(T)) + (kPair ? 2 * pair_floats<BN>() * 4 : 0) +
         (bias ? 2 * kBMq * (BN + kLdbQPad) * 4 : 0);
}

template <typename U>
__device__ __forceinline__ void put(void* base, int64_t at, float x) {
  reinterpret_cast<U*>(base)[at] = from_float<U>(x);
}

// Which pairs of a thread's C fragments (n-tiles 0..NT-1) are visible: bit nt * 4 + e for element e of
// n-tile nt, whose row is +8 for e >= 2 and whose column is nt * 8 + (e & 1) from those of element 0.
// (i0, j0): local query and key of element 0 of n-tile 0. kRowsAreKeys: rows are keys (dkdv) or
// queries (dq). Same test as visible(), with the per-element offsets folded into constants.
template <int NT, bool kRowsAreKeys>
__device__ __forceinline__ uint32_t visible_bits(const Params& p, const Seq& sq, int i0, int j0) {
  const int qlim = sq.qlen - i0, klim = sq.klen - j0, d0 = j0 - i0 - sq.shift;
  uint32_t vis = 0u;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int r = e >= 2 ? 8 : 0, c = nt * 8 + (e & 1);
      const int di = kRowsAreKeys ? c : r, dj = kRowsAreKeys ? r : c;
      const int d = d0 + dj - di;
      if (di < qlim && dj < klim && d >= p.band_lo && d <= p.band_hi) vis |= 1u << (nt * 4 + e);
    }
  }
  return vis;
}

// Bias tile (base-2 units) of queries [m0, m0 + ROWS) x keys [n0, n0 + COLS) into shared [ROWS][LDB] floats;
// zero outside queries [.., qhi) and keys [.., khi) (such pairs are masked anyway).
template <typename T, int ROWS, int COLS, int LDB, int NT = kThreads>
__device__ __forceinline__ void load_bias_tile(float* dst, const Params& p, const Seq& sq, int g, int h, int m0, int qhi, int n0, int khi) {
#pragma unroll 8
  for (int e = threadIdx.x; e < ROWS * COLS; e += NT) {
    const int r = e / COLS, c = e % COLS;
    const int i = m0 + r, j = n0 + c;
    float x = 0.f;
    if (i < qhi && j < khi) x = load_bias<T>(p, sq.b, g, h, sq.q0 + i, sq.k0 + j) * kLog2e;
    dst[r * LDB + c] = x;
  }
}

// The first array when kFirst, else the second (a reference to one of two arrays of different sizes).
template <bool kFirst, typename A, typename B>
__device__ __forceinline__ auto& pick(A& a, B& b) {
  if constexpr (kFirst) {
    return a;
  } else {
    return b;
  }
}

// One CTA: keys [n0, n0 + kBN) of sequence blockIdx.y, head blockIdx.z. kDV / kDK: which gradients
// this launch computes (dbias goes with dK, which needs dS). kPair (with both): 8 warps, each computing
// one of the two gradients for 16 keys (see pair_floats), one accumulator per warp. kDQ (fp32, with dK):
// each step also adds this CTA's share of dQ, dS K over its keys, to dq (pre-zeroed) with atomics, and
// the dQ kernel does not run.
template <typename T, int D, int BM, bool kDV, bool kDK, bool kPair = false, bool kDQ = false, bool kSerial = false, bool kRows = false>
__global__ void __launch_bounds__(kPair ? 2 * kThreads : kThreads, kPair ? pair_ctas<D>() : 0) bwd_dkdv_tc_kernel(BwdParams bp) {
#if ATTNCORE_TC
  static_assert(!kPair || (kDV && kDK), "a paired CTA computes both gradients");
  static_assert(!kDQ || (kDK && sizeof(T) == 4 && BM % 16 == 0), "atomic dQ: fp32, with dK");
  static_assert(!kSerial || kDQ, "serial dQ is added by the dK/dV CTAs");
  constexpr int NT = kPair ? 2 * kThreads : kThreads;
  constexpr bool kF32 = sizeof(T) == 4;  // 3xTF32 products
  constexpr int LD = pitch<T, D>();
  constexpr int BN = kBN;
  constexpr int LDB = kLdbKV;
  constexpr int kKG = BM >= 64 ? 1 : 0;  // fp32 chunk groups of the P^T / dS^T products (tc::tf32_frag_rows)
  // (K / V fragments kept in registers were faster for D = 64 but spilled: ptxas, sm_90)
  static_assert(BM % 16 == 0 && D % 16 == 0 && BM / 8 * 4 <= 32, "tile shapes");
  ATTNCORE_DYNAMIC_SMEM(smem_raw);
  T* Ks = reinterpret_cast<T*>(smem_raw);
  T* Vs = Ks + BN * LD;                         // only when kDK
  T* Qs = Vs + (kDK ? BN * LD : 0);             // [2][BM][LD]
  T* dOs = Qs + 2 * BM * LD;                    // [2][BM][LD]
  float* lse_s = reinterpret_cast<float*>(dOs + 2 * BM * LD);  // [2][BM]
  float* dl_s = lse_s + 2 * BM;                                // [2][BM]
  float* pair_s = dl_s + 2 * BM;                               // [4][BM / 8 * 4][32], only when kPair
  float* ds_s = pair_s + (kPair ? pair_floats<BM>() : 0);      // [BM][kLdS] dS, only when kDQ
  float* bias_s = ds_s + (kDQ ? BM * kLdS : 0);                // [2][BM][LDB], only with a bias

  const Params& p = bp.f;
  const int tid = threadIdx.x, lane = tid % 32;
  const int warp = kPair ? tid / 32 % 4 : tid / 32;  // which 16 keys of the tile
  // what this warp computes: S, P^T and dV (the dV warps of a pair), dP^T, dS^T and dK (the dK warps)
  const bool does_dv = kDV && (!kPair || tid < kThreads);
  const bool does_dk = kDK && (!kPair || tid >= kThreads);
  const int gr = lane / 4, tq = lane % 4;
  // The CTA's sequence and head here, its key block (x, 0 the longest under a causal band; kSerial: its first one)
  // at the end, each read from cta_pos where it is used (x would otherwise hold a register through the kernel).
  // kRows: key-block major (bwd_rows_first), a separate instance, so that the head-major ones compile as they did
  // before the order existed (a runtime choice cost the paired D = 256 kernel 4 more bytes of spills and 2% of
  // its non-causal speed on an H200).
  static_assert(!kRows || (kDQ && !kSerial), "only the atomic-dQ kernels take the key-block-major order");
  const int rows_first = kRows ? 1 : 0;
  const CtaPos at = cta_pos(rows_first);
  const int g = at.z / p.H, h = at.z % p.H;
  const Seq sq = load_seq(p, at.y, bp.seq_kw);
  // Keys [n0, n0 + BN); with kDQ, dQ is added into dq_base (dq, or kSerial: this CTA's slice of it)
  auto key_block = [&](const int n0, float* const dq_base) {
    if (n0 >= sq.klen) return;
    const int n1 = min(n0 + BN, sq.klen);
    int m_lo, m_hi;
    query_range(p, sq, n0, n1, &m_lo, &m_hi);
    const bool vec = p.vec != 0;
    const bool has_bias = p.bias != nullptr;
    const int64_t stat0 = (((int64_t)sq.b * p.G + g) * p.H + h) * p.Mq + sq.q0;  // lse2 / delta of local query 0

    float dv_own[kDV && !kPair ? D / 8 : 1][4];
    float dk[kDK ? D / 8 : 1][4];
    auto& dv = pick<kPair>(dk, dv_own);  // a paired warp's one accumulator serves as dV or dK
  #pragma unroll
    for (int i = 0; i < (kDV && !kPair ? D / 8 : 1); ++i) dv_own[i][0] = dv_own[i][1] = dv_own[i][2] = dv_own[i][3] = 0.f;
  #pragma unroll
    for (int i = 0; i < (kDK ? D / 8 : 1); ++i) dk[i][0] = dk[i][1] = dk[i][2] = dk[i][3] = 0.f;

    // Query tile [m0, m0 + BM) into buffer buf: Q, dO (rows past m_hi zero), the row statistics (rows
    // past m_hi: lse2 = +inf, delta = 0; they are masked anyway) and the bias tile.
    auto stage = [&](int buf, int m0) {
      tc::load_rows<T, BM, D, LD, NT>(Qs + buf * BM * LD, p.q, p.q_s, sq.b, sq.q0 + m0, g, h, m_hi - m0, p.K, vec);
      tc::load_rows<T, BM, D, LD, NT>(dOs + buf * BM * LD, bp.dout, bp.do_s, sq.b, sq.q0 + m0, g, h, m_hi - m0, p.Kv, vec);
      for (int r = tid; r < BM; r += NT) {
        const int i = m0 + r;
        float l2 = INFINITY, dl = 0.f;
        if (i < m_hi) {
          l2 = bp.lse2[stat0 + i];
          if (kDK) dl = bp.delta[stat0 + i];
        }
        lse_s[buf * BM + r] = l2;
        dl_s[buf * BM + r] = dl;
      }
      if (has_bias) load_bias_tile<T, BM, BN, LDB, NT>(bias_s + buf * BM * LDB, p, sq, g, h, m0, m_hi, n0, n1);
    };

    if (m_lo < m_hi) {
      tc::load_rows<T, BN, D, LD, NT>(Ks, p.k, p.k_s, sq.b, sq.k0 + n0, g, h, n1 - n0, p.K, vec);
      if (kDK) tc::load_rows<T, BN, D, LD, NT>(Vs, p.v, p.v_s, sq.b, sq.k0 + n0, g, h, n1 - n0, p.Kv, vec);
      stage(0, m_lo);
      tc::cp_async_commit();
    }

    // ldmatrix addresses (2-byte types): A fragments of this warp's 16 key rows; B fragments of the query tiles
    const uint32_t sK = tc::smem_addr(Ks) + warp * 16 * LD * 2 + tc::a_off<LD>(lane);
    const uint32_t sV = tc::smem_addr(Vs) + warp * 16 * LD * 2 + tc::a_off<LD>(lane);
    const uint32_t sQ = tc::smem_addr(Qs), sO = tc::smem_addr(dOs);
    const uint32_t bo = tc::b_off<LD>(lane), to = tc::t_off<LD>(lane);
    const int jw = warp * 16 + gr;  // this thread's key rows (local to the tile): jw and jw + 8
    int buf = 0;
    for (int m0 = m_lo; m0 < m_hi; m0 += BM, buf ^= 1) {
      tc::cp_async_wait<0>();
      __syncthreads();  // tile m0 in buffer buf; every warp is done with buffer buf ^ 1
      if (m0 + BM < m_hi) stage(buf ^ 1, m0 + BM);
      tc::cp_async_commit();
      const uint32_t sQb = sQ + buf * BM * LD * 2, sOb = sO + buf * BM * LD * 2;
      const T* Qb = Qs + buf * BM * LD;
      const T* dOb = dOs + buf * BM * LD;
      const float* lse_b = lse_s + buf * BM;
      const float* dl_b = dl_s + buf * BM;
      const float* bias_b = bias_s + buf * BM * LDB;

      // S^T = K Q^T and dP^T = V dO^T: rows = the warp's 16 keys, columns = BM queries
      float s[BM / 8][4];
      float dp[kDK ? BM / 8 : 1][4];
  #pragma unroll
      for (int i = 0; i < BM / 8; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
  #pragma unroll
      for (int i = 0; i < (kDK ? BM / 8 : 1); ++i) dp[i][0] = dp[i][1] = dp[i][2] = dp[i][3] = 0.f;
      // (a paired dK warp takes P^T from its partner instead of computing S^T)
      if constexpr (kF32) {
        if (!kPair || does_dv) tc::tf32_rows_rows<D, BM, LD>(s, Ks + warp * 16 * LD, Qb, gr, tq);
        if constexpr (kDK) {
          if (does_dk) tc::tf32_rows_rows<D, BM, LD>(dp, Vs + warp * 16 * LD, dOb, gr, tq);
        }
      } else {
        if (!kPair || does_dv) tc::h16_rows_rows<T, D, BM, LD>(s, sK, sQb + bo);
        if constexpr (kDK) {
          if (does_dk) tc::h16_rows_rows<T, D, BM, LD>(dp, sV, sOb + bo);
        }
      }

      // Element e of n-tile nt (bit nt * 4 + e of vis): key row jw (+8 for e >= 2), query column
      // nt * 8 + 2 tq + (e & 1).
      uint32_t vis = ~0u;
      if (!tile_all_visible(p, sq, m0, m0 + BM, n0, n0 + BN)) vis = visible_bits<BM / 8, true>(p, sq, m0 + 2 * tq, n0 + jw);
      // P^T and dS^T (masked pairs: 0)
      if (!kPair || does_dv) {
  #pragma unroll
        for (int nt = 0; nt < BM / 8; ++nt) {
  #pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int c = nt * 8 + 2 * tq + (e & 1);
            const bool ok = (vis >> (nt * 4 + e)) & 1u;
            float x = s[nt][e] * p.scale_log2;
            if (has_bias) x += bias_b[c * LDB + jw + (e >= 2 ? 8 : 0)];
            const float pr = ok ? tc::fast_exp2(x - lse_b[c]) : 0.f;
            s[nt][e] = pr;
            if constexpr (kDK && !kPair) dp[nt][e] = ok ? pr * (dp[nt][e] - dl_b[c]) : 0.f;
          }
        }
      }
      if constexpr (kPair) {  // P^T to the partner warp, lane to lane
        float* hand = pair_s + warp * (BM / 8 * 4) * 32 + lane;
        if (does_dv) {
  #pragma unroll
          for (int i = 0; i < BM / 8 * 4; ++i) hand[i * 32] = s[i / 4][i % 4];
        }
        __syncthreads();  // every P^T of this step written; read before the next step's first barrier
        if (does_dk) {  // dS^T = P^T (dP^T - delta); element i = nt * 4 + e, query column nt * 8 + 2 tq + (e & 1)
  #pragma unroll
          for (int i = 0; i < BM / 8 * 4; ++i) {
            const bool ok = (vis >> i) & 1u;
            const float dl = dl_b[(i / 4) * 8 + 2 * tq + (i & 1)];
            dp[i / 4][i % 4] = ok ? hand[i * 32] * (dp[i / 4][i % 4] - dl) : 0.f;
          }
        }
      }
      // dS into dbias, each visible pair once
      if constexpr (kDK) {
        if (does_dk && bp.dbias != nullptr) {
          const int64_t at0 = (stat0 + m0) * p.Mk + sq.k0 + n0 + jw;
  #pragma unroll
          for (int nt = 0; nt < BM / 8; ++nt) {
  #pragma unroll
            for (int e = 0; e < 4; ++e) {
              if (!((vis >> (nt * 4 + e)) & 1u)) continue;
              const int64_t at = at0 + (int64_t)(nt * 8 + 2 * tq + (e & 1)) * p.Mk + (e >= 2 ? 8 : 0);
              if (bp.dbias_f32) {
                put<float>(bp.dbias, at, dp[nt][e]);
              } else {
                put<T>(bp.dbias, at, dp[nt][e]);
              }
            }
          }
        }
      }

      // dV += P^T dO, dK += dS^T Q (P^T and dS^T as the A operand, straight from their C fragments)
      if constexpr (kDV) {
        if (does_dv) {
          if constexpr (kF32) {
            tc::tf32_frag_rows<D, BM, LD, kKG>(dv, s, dOb, gr, tq);
          } else {
            tc::h16_frag_rows<T, D, BM, LD>(dv, s, sOb + to);
          }
        }
      }
      if constexpr (kDK) {
        if (does_dk) {
          if constexpr (kF32) {
            tc::tf32_frag_rows<D, BM, LD, kKG>(dk, dp, Qb, gr, tq);
          } else {
            tc::h16_frag_rows<T, D, BM, LD>(dk, dp, sQb + to);
          }
        }
      }

      // dQ[m0 + .., :] += scale dS K over this CTA's keys: the dK warps put dS^T into ds_s as dS [query][key];
      // then every warp takes D / warps columns of the BM x D product (A: dS rows by float2, in the C-fragment
      // order tf32_frag_rows reads; B: the K tile) and adds them to dq atomically.
      if constexpr (kDQ) {
        constexpr int kWarps = NT / 32, DW = D / kWarps;
        static_assert(D % (8 * kWarps) == 0, "dQ column slices");
        if (does_dk) {
  #pragma unroll
          for (int nt = 0; nt < BM / 8; ++nt) {
  #pragma unroll
            for (int e = 0; e < 4; ++e) ds_s[(nt * 8 + 2 * tq + (e & 1)) * kLdS + jw + (e >= 2 ? 8 : 0)] = dp[nt][e];
          }
        }
        __syncthreads();  // dS complete; read before the next step's first barrier
        const int c0 = tid / 32 * DW;  // this warp's dQ columns
  #pragma unroll
        for (int r0 = 0; r0 < BM; r0 += 16) {
          float acc[DW / 8][4];
  #pragma unroll
          for (int i = 0; i < DW / 8; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
  #pragma unroll
          for (int kc = 0; kc < BN / 8; ++kc) {  // 8 keys at a time: four dS values per thread live
            const float2 lo = *reinterpret_cast<const float2*>(ds_s + (r0 + gr) * kLdS + kc * 8 + 2 * tq);
            const float2 hi = *reinterpret_cast<const float2*>(ds_s + (r0 + gr + 8) * kLdS + kc * 8 + 2 * tq);
            const float a[1][4] = {{lo.x, lo.y, hi.x, hi.y}};
            tc::tf32_frag_rows<DW, 8, LD, 1>(acc, a, Ks + kc * 8 * LD + c0, gr, tq);
          }
  #pragma unroll
          for (int hr = 0; hr < 2; ++hr) {
            const int i = m0 + r0 + gr + hr * 8;
            if (i >= m_hi || c0 >= p.K) continue;
            tc::add_row<DW>(row_ptr_mut<float>(dq_base, bp.dq_s, sq.b, sq.q0 + i, g, h) + c0, p.K - c0, acc, hr, tq, p.scale);
          }
        }
      }
    }
    tc::cp_async_wait<0>();

    // Rows jw and jw + 8 (zeros when no query sees them); keys past klen are not written.
  #pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      const int j = n0 + jw + hr * 8;
      if (j >= sq.klen) continue;
      if constexpr (kDK) {
        if (does_dk) tc::store_row<T, D>(row_ptr_mut<T>(bp.dk, bp.dk_s, sq.b, sq.kw0 + j, g, h), p.K, dk, hr, tq, p.scale);
      }
      if constexpr (kDV) {
        if (does_dv) tc::store_row<T, D>(row_ptr_mut<T>(bp.dv, bp.dv_s, sq.b, sq.kw0 + j, g, h), p.Kv, dv, hr, tq, 1.f);
      }
    }
  };
  if constexpr (kSerial) {  // key blocks blockIdx.x, + gridDim.x, ...: each dq element gets this CTA's shares in that order
    float* const base = static_cast<float*>(bp.dq) + (int64_t)blockIdx.x * bp.dq_slice;
    const int blocks = (sq.klen + BN - 1) / BN;
    for (int kb = blockIdx.x; kb < blocks; kb += gridDim.x) {
      if (kb != (int)blockIdx.x) __syncthreads();  // every warp is done with the last block's tiles (and its dQ adds)
      key_block(kb * BN, base);
    }
  } else {
    key_block(cta_pos(rows_first).x * BN, static_cast<float*>(bp.dq));
  }
#else
  __trap();  // never launched: the host checks tc_compiled_for_device() first
#endif
}

// One CTA: queries [m0, m0 + kBMq) of sequence blockIdx.y, head blockIdx.z. kPair (fp32): 8 warps; warp
// w < 4 computes S and P of 16 queries, warp w + 4 dP of the same queries, they swap them through shared
// memory, and each accumulates half of dQ's columns (one S and one dP product per pair and step, half the
// accumulator per warp).
template <typename T, int D, int BN, bool kPair = false>
__global__ void __launch_bounds__(kPair ? 2 * kThreads : kThreads, kPair ? pair_ctas<D>() : 0) bwd_dq_tc_kernel(BwdParams bp) {
#if ATTNCORE_TC
  constexpr bool kF32 = sizeof(T) == 4;  // 3xTF32 products
  static_assert(!kPair || kF32, "paired dQ CTAs are fp32 only");
  constexpr int NT = kPair ? 2 * kThreads : kThreads;
  constexpr int DQ = kPair ? D / 2 : D;  // dQ columns per warp
  constexpr int LD = pitch<T, D>();
  constexpr int BM = kBMq;
  constexpr int LDB = (BN + kLdbQPad);
  // fp32 chunk groups of the dS product (tc::tf32_frag_rows): 1 at D = 64 as in the dK/dV kernel, the
  // pair timed together (with 1 this kernel alone spills 8 bytes, with 2 none: not timed apart)
  constexpr int kKG = BN >= 64 ? 1 : 0;
  // Q / dO fragments of the warp's queries stay in registers (for D = 128 only where ptxas fits them:
  // sm_90; fp32 splits its operands as it reads them)
  constexpr bool kQRegs = !kF32 && D <= (ATTNCORE_ARCH >= 900 ? 128 : 64);
  static_assert(BN % 16 == 0 && D % 16 == 0 && BN / 8 * 4 <= 32, "tile shapes");
  ATTNCORE_DYNAMIC_SMEM(smem_raw);
  T* Qs = reinterpret_cast<T*>(smem_raw);
  T* dOs = Qs + BM * LD;
  T* Ks = dOs + BM * LD;     // [2][BN][LD]
  T* Vs = Ks + 2 * BN * LD;  // [2][BN][LD]
  float* p_s = reinterpret_cast<float*>(Vs + 2 * BN * LD);    // [4][BN / 8 * 4][32] P, only when kPair
  float* dp_s = p_s + (kPair ? pair_floats<BN>() : 0);         // the same for dP
  float* bias_s = dp_s + (kPair ? pair_floats<BN>() : 0);      // [2][BM][LDB], only with a bias

  const Params& p = bp.f;
  const int tid = threadIdx.x, lane = tid % 32;
  const int warp = kPair ? tid / 32 % 4 : tid / 32;  // which 16 queries of the tile
  const int half = kPair ? tid / kThreads : 0;       // paired: 0 computes P, 1 dP; dQ columns [half DQ, half DQ + DQ)
  const int gr = lane / 4, tq = lane % 4;
  const int g = blockIdx.z / p.H, h = blockIdx.z % p.H;
  const Seq sq = load_seq(p, blockIdx.y, bp.seq_kw);
  const int m0 = blockIdx.x * BM;
  if (m0 >= sq.qlen) return;
  const int m1 = min(m0 + BM, sq.qlen);
  int n_lo, n_hi;
  key_range(p, sq, m0, m1, &n_lo, &n_hi);
  const bool vec = p.vec != 0;
  const bool has_bias = p.bias != nullptr;
  const int iw = warp * 16 + gr;  // this thread's query rows (local to the tile): iw and iw + 8

  // statistics of rows iw and iw + 8 (rows past qlen: masked)
  float lse_r[2], dl_r[2];
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    const int i = m0 + iw + hr * 8;
    lse_r[hr] = INFINITY;
    dl_r[hr] = 0.f;
    if (i < sq.qlen) {
      const int64_t at = (((int64_t)sq.b * p.G + g) * p.H + h) * p.Mq + sq.q0 + i;
      lse_r[hr] = bp.lse2[at];
      dl_r[hr] = bp.delta[at];
    }
  }

  float dq[DQ / 8][4];
#pragma unroll
  for (int i = 0; i < DQ / 8; ++i) dq[i][0] = dq[i][1] = dq[i][2] = dq[i][3] = 0.f;

  auto stage = [&](int buf, int n0) {
    tc::load_rows<T, BN, D, LD, NT>(Ks + buf * BN * LD, p.k, p.k_s, sq.b, sq.k0 + n0, g, h, n_hi - n0, p.K, vec);
    tc::load_rows<T, BN, D, LD, NT>(Vs + buf * BN * LD, p.v, p.v_s, sq.b, sq.k0 + n0, g, h, n_hi - n0, p.Kv, vec);
    if (has_bias) load_bias_tile<T, BM, BN, LDB, NT>(bias_s + buf * BM * LDB, p, sq, g, h, m0, m1, n0, n_hi);
  };
  if (n_lo < n_hi) {
    tc::load_rows<T, BM, D, LD, NT>(Qs, p.q, p.q_s, sq.b, sq.q0 + m0, g, h, m1 - m0, p.K, vec);
    tc::load_rows<T, BM, D, LD, NT>(dOs, bp.dout, bp.do_s, sq.b, sq.q0 + m0, g, h, m1 - m0, p.Kv, vec);
    stage(0, n_lo);
    tc::cp_async_commit();
  }

  // ldmatrix addresses (2-byte types): A fragments of this warp's 16 query rows; B fragments of the key tiles
  const uint32_t sQ = tc::smem_addr(Qs) + warp * 16 * LD * 2 + tc::a_off<LD>(lane);
  const uint32_t sO = tc::smem_addr(dOs) + warp * 16 * LD * 2 + tc::a_off<LD>(lane);
  const uint32_t sK = tc::smem_addr(Ks), sV = tc::smem_addr(Vs);
  const uint32_t bo = tc::b_off<LD>(lane), to = tc::t_off<LD>(lane);
  uint32_t qf[kQRegs ? D / 16 : 1][4];
  uint32_t of[kQRegs ? D / 16 : 1][4];
  int buf = 0;
  for (int n0 = n_lo; n0 < n_hi; n0 += BN, buf ^= 1) {
    tc::cp_async_wait<0>();
    __syncthreads();  // K / V tile n0 in buffer buf; every warp is done with buffer buf ^ 1
    if (n0 + BN < n_hi) stage(buf ^ 1, n0 + BN);
    tc::cp_async_commit();
    if (kQRegs && n0 == n_lo) {
#pragma unroll
      for (int kk = 0; kk < (kQRegs ? D / 16 : 0); ++kk) {
        tc::ldsm<false>(qf[kk], sQ + kk * 32);
        tc::ldsm<false>(of[kk], sO + kk * 32);
      }
    }
    const uint32_t sKb = sK + buf * BN * LD * 2, sVb = sV + buf * BN * LD * 2;
    const T* Kb = Ks + buf * BN * LD;
    const T* Vb = Vs + buf * BN * LD;
    const float* bias_b = bias_s + buf * BM * LDB;

    // S = Q K^T and dP = dO V^T: rows = the warp's 16 queries, columns = BN keys
    float s[BN / 8][4], dp[BN / 8][4];
#pragma unroll
    for (int i = 0; i < BN / 8; ++i) {
      s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
      dp[i][0] = dp[i][1] = dp[i][2] = dp[i][3] = 0.f;
    }
    if constexpr (kF32) {
      if (!kPair || half == 0) tc::tf32_rows_rows<D, BN, LD>(s, Qs + warp * 16 * LD, Kb, gr, tq);
      if (!kPair || half == 1) tc::tf32_rows_rows<D, BN, LD>(dp, dOs + warp * 16 * LD, Vb, gr, tq);
    } else if constexpr (kQRegs) {
      tc::h16_rows_rows<T, D, BN, LD>(s, qf, sKb + bo);
      tc::h16_rows_rows<T, D, BN, LD>(dp, of, sVb + bo);
    } else {
      tc::h16_rows_rows<T, D, BN, LD>(s, sQ, sKb + bo);
      tc::h16_rows_rows<T, D, BN, LD>(dp, sO, sVb + bo);
    }

    // Element e of n-tile nt (bit nt * 4 + e of vis): query row iw (+8 for e >= 2), key column
    // nt * 8 + 2 tq + (e & 1).
    uint32_t vis = ~0u;
    if (!tile_all_visible(p, sq, m0, m0 + BM, n0, n0 + BN)) vis = visible_bits<BN / 8, false>(p, sq, m0 + iw, n0 + 2 * tq);
    // dS = P (dP - delta), masked pairs 0 (paired: P from the first warp, dP from the second, swapped)
    if (!kPair || half == 0) {
#pragma unroll
      for (int nt = 0; nt < BN / 8; ++nt) {
#pragma unroll
        for (int hr = 0; hr < 2; ++hr) {
          float2 bb = make_float2(0.f, 0.f);
          if (has_bias) bb = *reinterpret_cast<const float2*>(bias_b + (iw + hr * 8) * LDB + nt * 8 + 2 * tq);
#pragma unroll
          for (int u = 0; u < 2; ++u) {
            const int e = 2 * hr + u;
            const bool ok = (vis >> (nt * 4 + e)) & 1u;
            const float x = s[nt][e] * p.scale_log2 + (u ? bb.y : bb.x);
            const float pr = ok ? tc::fast_exp2(x - lse_r[hr]) : 0.f;
            if constexpr (kPair) {
              s[nt][e] = pr;
            } else {
              dp[nt][e] = ok ? pr * (dp[nt][e] - dl_r[hr]) : 0.f;
            }
          }
        }
      }
    }
    if constexpr (kPair) {
      const int slot = warp * (BN / 8 * 4) * 32 + lane;
      float* mine = (half == 0 ? p_s : dp_s) + slot;
      const float* theirs = (half == 0 ? dp_s : p_s) + slot;
#pragma unroll
      for (int i = 0; i < BN / 8 * 4; ++i) mine[i * 32] = half == 0 ? s[i / 4][i % 4] : dp[i / 4][i % 4];
      __syncthreads();  // P and dP of this step written; read before the next step's first barrier
#pragma unroll
      for (int nt = 0; nt < BN / 8; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const bool ok = (vis >> (nt * 4 + e)) & 1u;
          const float other = theirs[(nt * 4 + e) * 32];
          const float pr = half == 0 ? s[nt][e] : other, dpv = half == 0 ? other : dp[nt][e];
          dp[nt][e] = ok ? pr * (dpv - dl_r[e >> 1]) : 0.f;
        }
      }
    }

    // dQ += dS K (paired: this warp's half of the columns)
    if constexpr (kF32) {
      tc::tf32_frag_rows<DQ, BN, LD, kKG>(dq, dp, Kb + half * DQ, gr, tq);
    } else {
      tc::h16_frag_rows<T, D, BN, LD>(dq, dp, sKb + to);
    }
  }
  tc::cp_async_wait<0>();

#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    const int i = m0 + iw + hr * 8;
    if (i >= sq.qlen) continue;
    tc::store_row<T, DQ>(row_ptr_mut<T>(bp.dq, bp.dq_s, sq.b, sq.q0 + i, g, h) + half * DQ, p.K - half * DQ, dq, hr, tq, p.scale);
  }
#else
  __trap();  // never launched: the host checks tc_compiled_for_device() first
#endif
}

// How dK and dV are computed: one launch of 4-warp CTAs (each warp both gradients for 16 keys), two
// launches (dV, then dK: one accumulator per warp, P recomputed), or one launch of paired 8-warp CTAs.
enum class Dkdv { kOne, kSplit, kPair };

// fp32 at D = 128 and 256: paired 8-warp CTAs (Dkdv::kPair, for dK/dV and for dQ) where
// ATTNCORE_CUTLASS_FP32_BWD_PAIRS lists the padded head dim (comma-separated: "256", "128,256", "" for
// none; unset: "256"), else the 4-warp kernels (D = 256: dK and dV in two launches). At D = 256 every 4-warp
// kernel fits one CTA per multiprocessor (shared memory), 4 warps per SM, and the two dK/dV launches each
// recompute S = K Q^T and read Q and dO; the paired kernels run 8 warps per SM, compute S once per step and
// split the dQ accumulator: +49-55% on the H200 (2026-12-01, benchmarks/RESULTS.md). At D = 128 two paired
// CTAs fit (16 warps per SM, at 128 registers with some spills), measured 1-3% slower than the 4-warp
// kernel, so not paired by default. Read at every backward call.
template <int D>
bool fp32_bwd_pairs() {
  return env_list_has("ATTNCORE_CUTLASS_FP32_BWD_PAIRS", "256", D == 128 ? "128" : "256");
}

const char* g_variant = "none";  // bwd_tc_variant()
const char* g_dq = "none";       // bwd_tc_dq()
const char* g_order = "none";  // bwd_tc_order()

// D: padded head dim; BM: queries per dkdv step; BNQ: keys per dq step; kMode: how the dK/dV launches go;
// kDQ: the dK/dV CTAs add dQ atomically (dq pre-zeroed) and the dQ kernel does not run.
template <typename T, int D, int BM, int BNQ, Dkdv kMode, bool kDQ = false, bool kSerial = false>
cudaError_t launch(const BwdParams& bp, cudaStream_t stream, bool* launched) {
  constexpr bool kSplit = kMode == Dkdv::kSplit, kPair = kMode == Dkdv::kPair;
  static_assert(!kDQ || !kSplit, "atomic dQ needs dS and dK's CTA");
  const Params& p = bp.f;
  const bool bias = p.bias != nullptr;
  const int smem_dq = dq_smem_bytes<T, D, BNQ, kPair>(bias);
  const int smem_k = dkdv_smem_bytes<T, D, BM, true, kPair, kDQ>(bias);  // dK (and dV unless kSplit)
  const int smem_v = dkdv_smem_bytes<T, D, BM, false>(bias);              // dV only
  auto kdq = bwd_dq_tc_kernel<T, D, BNQ, kPair>;
  // the atomic-dQ kernels in key-block-major order where bwd_rows_first asks for it (kRows)
  constexpr bool kOrdered = kDQ && !kSerial;
  auto kk = kOrdered && p.rows_first ? bwd_dkdv_tc_kernel<T, D, BM, !kSplit, true, kPair, kDQ, kSerial, kOrdered>
                                     : bwd_dkdv_tc_kernel<T, D, BM, !kSplit, true, kPair, kDQ, kSerial>;
  // *launched stays false when shared memory does not fit: the portable kernels run
  if ((!kDQ && !allow_smem(kdq, smem_dq)) || !allow_smem(kk, smem_k)) return cudaSuccess;
  if constexpr (kSplit) {
    if (!allow_smem(bwd_dkdv_tc_kernel<T, D, BM, true, false>, smem_v)) return cudaSuccess;
  }
  *launched = true;
  g_variant = kPair ? "paired" : kSplit ? "split" : "one";
  g_dq = kSerial ? "serial" : kDQ ? "atomic" : "kernel";
  g_order = kOrdered && p.rows_first ? "rows" : "heads";
  if (p.num_seqs <= 0 || p.G * p.H <= 0) return cudaSuccess;
  if (p.max_k > 0) {
    dim3 grid(kSerial ? bp.dq_splits : (p.max_k + kBN - 1) / kBN, p.num_seqs, p.G * p.H);
    if constexpr (kSplit) {
      auto kv = bwd_dkdv_tc_kernel<T, D, BM, true, false>;
      ATTNCORE_LAUNCH(kv, grid, kThreads, smem_v, stream, bp);
      cudaError_t err = cudaGetLastError();
      if (err != cudaSuccess) return err;
    }
    ATTNCORE_LAUNCH(kk, grid, kPair ? 2 * kThreads : kThreads, smem_k, stream, bp);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  if (!kDQ && p.max_q > 0) {
    dim3 grid((p.max_q + kBMq - 1) / kBMq, p.num_seqs, p.G * p.H);
    ATTNCORE_LAUNCH(kdq, grid, kPair ? 2 * kThreads : kThreads, smem_dq, stream, bp);
    return cudaGetLastError();
  }
  return cudaSuccess;
}

// fp32: the atomic-dQ launch (kDQ, BMA queries per dK/dV step) unless the caller asks for a reproducible
// order; then, or where its shared memory does not fit, the same dK/dV mode (BM queries per step) with the
// dQ kernel.
template <typename T, int D, int BMA, int BM, int BNQ, Dkdv kMode>
cudaError_t launch_fp32(const BwdParams& bp, cudaStream_t stream, bool* launched) {
  if (!bp.deterministic || bp.dq_splits > 0) {  // atomic, or serial into dq_splits slices
    const cudaError_t err = bp.deterministic ? launch<T, D, BMA, BNQ, kMode, true, true>(bp, stream, launched)
                                             : launch<T, D, BMA, BNQ, kMode, true>(bp, stream, launched);
    if (err != cudaSuccess || *launched) return err;
  }
  return launch<T, D, BM, BNQ, kMode>(bp, stream, launched);
}

// CTAs of the serial-dQ dK/dV kernel (launch_fp32's) that fit one multiprocessor; 0 where it does not fit.
template <int D, int BMA, Dkdv kMode>
int serial_per_sm(const BwdParams& bp) {
  constexpr bool kPair = kMode == Dkdv::kPair;
  auto kern = bwd_dkdv_tc_kernel<float, D, BMA, true, true, kPair, true, true>;
  const int smem = dkdv_smem_bytes<float, D, BMA, true, kPair, true>(bp.f.bias != nullptr);
  int n = 0;
  if (!allow_smem(kern, smem)) return 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kern, kPair ? 2 * kThreads : kThreads, smem) != cudaSuccess) {
    (void)cudaGetLastError();  // not left for the next launch check to report
    return 0;
  }
  return n;
}

template <typename T>
cudaError_t dispatch(const BwdParams& bp, cudaStream_t stream, bool* launched) {
  const int d = max(bp.f.K, bp.f.Kv);
  // fp32: narrower steps at D >= 128 (twice the bytes per tile; the split operands take registers); atomic
  // dQ at D = 64 with 32-query steps, which keep two CTAs per multiprocessor with the dS tile
  constexpr bool kF32 = sizeof(T) == 4;
  if constexpr (kF32) {
    if (d <= 64) return launch_fp32<T, 64, 32, 64, 64, Dkdv::kOne>(bp, stream, launched);
    if (d <= 128) {
      if (fp32_bwd_pairs<128>()) return launch_fp32<T, 128, 16, 16, 16, Dkdv::kPair>(bp, stream, launched);
      return launch_fp32<T, 128, 16, 16, 16, Dkdv::kOne>(bp, stream, launched);
    }
    if (d <= 256) {
      if (fp32_bwd_pairs<256>()) return launch_fp32<T, 256, 16, 16, 16, Dkdv::kPair>(bp, stream, launched);
      return launch<T, 256, 16, 16, Dkdv::kSplit>(bp, stream, launched);
    }
  } else {
    if (d <= 64) return launch<T, 64, 64, 64, Dkdv::kOne>(bp, stream, launched);
    if (d <= 128) return launch<T, 128, 64, 64, Dkdv::kOne>(bp, stream, launched);
    if (d <= 256) return launch<T, 256, 32, 32, Dkdv::kSplit>(bp, stream, launched);
  }
  return cudaSuccess;
}

}  // namespace

const char* bwd_tc_variant() { return g_variant; }
const char* bwd_tc_dq() { return g_dq; }
const char* bwd_tc_order() { return g_order; }

// Whether the two-kernel order (the dQ kernel after a dK/dV launch without dQ) fits this call's shared memory.
template <int D, int BM, int BNQ, Dkdv kMode>
bool two_kernels_fit(const BwdParams& bp) {
  constexpr bool kPair = kMode == Dkdv::kPair;
  const bool bias = bp.f.bias != nullptr;
  return allow_smem(bwd_dq_tc_kernel<float, D, BNQ, kPair>, dq_smem_bytes<float, D, BNQ, kPair>(bias)) &&
         allow_smem(bwd_dkdv_tc_kernel<float, D, BM, true, true, kPair>, dkdv_smem_bytes<float, D, BM, true, kPair>(bias));
}

// Serial dQ splits (kernels.h). By occupancy: the count, up to one per key block, kMaxDqSplits and what
// kSliceBudget bytes of slices allow, whose CTAs fill their waves best (fewest splits on a tie); 0 (the two
// kernels) where even that leaves half of the last wave's slots idle and the two kernels fit.
constexpr int kMaxDqSplits = 8;
constexpr long long kSliceBudget = 1LL << 30;
int bwd_tc_dq_splits(const BwdParams& bp) {
  const Params& p = bp.f;
  const int d = max(p.K, p.Kv);
  int per_sm = 0;
  bool two_fit = false;
  if (d <= 64) {
    per_sm = serial_per_sm<64, 32, Dkdv::kOne>(bp);
    two_fit = two_kernels_fit<64, 64, 64, Dkdv::kOne>(bp);
  } else if (d <= 128) {
    const bool paired = fp32_bwd_pairs<128>();
    per_sm = paired ? serial_per_sm<128, 16, Dkdv::kPair>(bp) : serial_per_sm<128, 16, Dkdv::kOne>(bp);
    two_fit = paired ? two_kernels_fit<128, 16, 16, Dkdv::kPair>(bp) : two_kernels_fit<128, 16, 16, Dkdv::kOne>(bp);
  } else if (d <= 256 && fp32_bwd_pairs<256>()) {
    per_sm = serial_per_sm<256, 16, Dkdv::kPair>(bp);
    two_fit = two_kernels_fit<256, 16, 16, Dkdv::kPair>(bp);
  }
  const int blocks = (p.max_k + kBN - 1) / kBN;
  if (per_sm <= 0 || blocks <= 0) return 0;
  const char* env = std::getenv("ATTNCORE_CUTLASS_FP32_DQ_SPLITS");
  if (env != nullptr && *env != '\0') {
    const int forced = std::atoi(env);
    return forced <= 0 ? 0 : std::min(forced, blocks);
  }
  int dev = 0, sms = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) return two_fit ? 0 : 1;
  const long long heads = (long long)p.num_seqs * p.G * p.H, slots = (long long)per_sm * std::max(sms, 1);
  const long long dq_bytes = (long long)p.B * p.Mq * p.G * p.H * p.K * 4;
  const long long cap = std::max(1LL, std::min({(long long)blocks, (long long)kMaxDqSplits, kSliceBudget / std::max(dq_bytes, 1LL)}));
  long long best = 1;
  double best_fill = 0.0;
  for (long long n = 1; n <= cap; ++n) {
    const long long ctas = heads * n, waves = (ctas + slots - 1) / slots;
    const double fill = (double)ctas / (double)(waves * slots);
    if (fill > best_fill + 1e-9) {
      best = n;
      best_fill = fill;
    }
  }
  return best_fill < 0.5 && two_fit ? 0 : (int)best;
}

namespace {

// The order of the fp32 atomic-dQ dK/dV CTAs (cta_pos; the other backward kernels keep theirs),
// ATTNCORE_CUTLASS_BWD_ORDER, read at every backward: "rows" (key-block major: every (sequence, head)'s first
// key block, under a causal band the longest, then every second one, ...) or "heads" (head-major, as launched);
// unset or anything else: key-block major for calls with a causal or local band (plugin.py's backward_order
// mirrors this; last_backward_order() reports what ran). Measured on an H200 (benchmarks/RESULTS.md, stop 23;
// both orders interleaved in one process): the fp32 causal backward +2.0% to +6.2% on all 12 cells, head dims
// 64, 128 and 256, M = 512-4096.
bool bwd_rows_first(const BwdParams& bp, DType dt) {
  return dt == DType::kF32 && !bp.deterministic && env_rows_first("ATTNCORE_CUTLASS_BWD_ORDER", has_band(bp.f));
}

}  // namespace

cudaError_t bwd_tc(const BwdParams& call, DType dt, cudaStream_t stream, bool* launched) {
  *launched = false;
  BwdParams p = call;
  p.f.rows_first = bwd_rows_first(call, dt) ? 1 : 0;
  switch (dt) {
    case DType::kF16: return dispatch<__half>(p, stream, launched);
    case DType::kBF16: return dispatch<__nv_bfloat16>(p, stream, launched);
    case DType::kF32: return dispatch<float>(p, stream, launched);
  }
  return cudaErrorInvalidValue;
}

}  // namespace attncore
