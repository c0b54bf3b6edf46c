// Tensor-core forward on sm_80 and newer (mma.sync; Hopper runs it too): fp16/bf16 with m16n8k16, fp32
// as 3xTF32 with m16n8k8 (each operand split into two tf32 parts, fp32 accuracy; mma.cuh).
//
// One CTA of 4 warps (8 for fp32 at D = 256; warps_for) owns 64 (128) queries of one (sequence,
// group, head); each warp owns 16 of them and keeps its output tile in registers (and, for fp16/bf16
// with D <= 128, its Q fragments). Keys stream through shared memory in tiles of BN with a two-stage
// cp.async pipeline: tile n + 1 (K and V) loads while tile n is multiplied (or, for fp32 at D = 256, and at
// D = 64 without a band mask and with at least kWideKeysMin keys, kSplitKV: one buffer each for K and V,
// twice the keys in the same shared memory, the next K loading during P V and the next V during Q K^T).
// Scores stay in registers and become the A operand of P V directly (see mma.cuh, and tc::tf32_frag_rows
// for fp32). Head dims are padded with zeros to D (64, 128 or 256). Tiles inside the band with no bias take an unmasked path (the scale
// folded into one FMA before exp2); tiles on a band edge or a sequence end, or with a bias, test each
// score against its row's key interval. Query tiles are scheduled last-first, so under a causal mask
// the longest rows start first and the short ones fill the tail. fp32 at D = 128 runs "wide" warps by
// default instead (fwd_f32_wide_kernel): 32 query rows each, every split K/V fragment serving two m-tiles.
#include "common.cuh"
#include "kernels.h"
#include "mma.cuh"
#include "tf32_tiles.cuh"

#include <cstdlib>
#include <string>
#include <type_traits>

namespace attncore {
namespace {

// A CTA of W warps owns W * 16 queries (each warp 16 rows).
template <int W>
__host__ __device__ constexpr int threads_of() {
  return W * 32;
}
template <int W>
__host__ __device__ constexpr int rows_of() {
  return W * 16;
}

// Shared-memory row pitch: 16 bytes of padding, so the rows one fragment load touches fall in distinct banks
// (ldmatrix for 2-byte types; for fp32 the scalar loads of (g, t) below, at word offsets 4 g + t).
template <typename T, int D>
__host__ __device__ constexpr int row_pitch() {
  return D + 16 / static_cast<int>(sizeof(T));
}

template <typename T, int D, int BN, int STAGES, int W>
constexpr int fwd_smem_bytes() {
  return (rows_of<W>() + 2 * STAGES * BN) * row_pitch<T, D>() * static_cast<int>(sizeof(T));
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

// The end of a warp's rows i0 and i0 + 8 (this thread's share of them): the output rows divided by their sums
// (the quad's shares added), and the log-sum-exp in natural log.
// c0: the first output column o holds (a warp that owns a slice of the columns); with_lse: whether this warp
// writes the rows' log-sum-exp (one of the warps sharing rows does).
template <typename T, int D>
__device__ __forceinline__ void store_outputs(const Params& p, const Seq& sq, int g, int h, int i0, int tq, const float (&o)[D / 8][4],
                                              const float (&m_r)[2], const float (&l_r)[2], int c0 = 0, bool with_lse = true) {
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    const float l = quad_sum(l_r[hr]);
    const int i = i0 + hr * 8;
    if (i >= sq.qlen) continue;
    const float inv = l > 0.f ? 1.f / l : 0.f;
    if (p.out_f32) {
      tc::store_row<float, D>(row_ptr_mut<float>(p.out, p.o_s, sq.b, sq.q0 + i, g, h) + c0, p.Kv - c0, o, hr, tq, inv);
    } else {
      tc::store_row<T, D>(row_ptr_mut<T>(p.out, p.o_s, sq.b, sq.q0 + i, g, h) + c0, p.Kv - c0, o, hr, tq, inv);
    }
    if (with_lse && p.lse != nullptr && tq == 0) {
      const int64_t at = ((int64_t)(sq.b * p.G + g) * p.H + h) * p.Mq + sq.q0 + i;
      p.lse[at] = l > 0.f ? (m_r[hr] + log2f(l)) * kLn2 : -INFINITY;
    }
  }
}

// Where a forward CTA works (grid: x row blocks, y sequences, z heads): head g, h; sequence sq; query rows
// from m0 (kBM of them, clipped to the sequence); the keys [n_lo, n_hi) any of those rows may see. false:
// the rows start past the sequence's end. Row block x = 0 is the last one (under a causal band the longest);
// the order in which CTAs go out decides the tail of a call whose CTAs differ in work (cta_pos):
//   p.rows_first == 0: head-major, the last row block first within each (sequence, head): CTAs running at once
//     share their keys and values in L2, but a long row block of the last heads starts late and runs alone (a
//     simulated list schedule loses 7-13% of a causal call's time on 132 multiprocessors);
//   p.rows_first == 1: row-block major, the longest first over the whole call (within 1-3% of the ideal in
//     the same simulation), at the price of that L2 sharing (see fwd_rows_first).
struct FwdCta {
  int g, h, m0, n_lo, n_hi;
  Seq sq;
};

// kOrder: the fp32 kernels take p.rows_first; the fp16/bf16 ones read blockIdx as they did before the order
// existed, so that their code stays as it was (reading the grid through cta_pos moved ptxas's register counts
// by up to 7 there; fwd_rows_first).
template <int kBM, bool kOrder>
__device__ __forceinline__ bool fwd_cta(const Params& p, FwdCta& c) {
  if constexpr (kOrder) {
    const CtaPos at = cta_pos(p.rows_first);
    c.g = at.z / p.H;
    c.h = at.z % p.H;
    c.sq = load_seq(p, at.y);
    c.m0 = (gridDim.x - 1 - at.x) * kBM;
  } else {
    c.g = blockIdx.z / p.H;
    c.h = blockIdx.z % p.H;
    c.sq = load_seq(p, blockIdx.y);
    c.m0 = (gridDim.x - 1 - blockIdx.x) * kBM;
  }
  if (c.m0 >= c.sq.qlen) return false;
  key_range(p, c.sq, c.m0, min(c.m0 + kBM, c.sq.qlen), &c.n_lo, &c.n_hi);
  return true;
}

// kSplitKV (with STAGES = 1): K and V in a buffer each, their loads interleaved with the products: K of
// the next tile loads during P V, V of the next tile during Q K^T and the softmax (four barriers a tile).
// The shared memory of one stage, the overlap of two, for wider key tiles where two stages do not fit.
template <typename T, int D, int BN, int STAGES, int W, bool kSplitKV = false, bool kWarpMasks = false>
__global__ void __launch_bounds__(W * 32) fwd_tc_kernel(Params p) {
  constexpr int kThreads = threads_of<W>();
  constexpr int kBM = rows_of<W>();
#if ATTNCORE_TC
  constexpr bool kF32 = std::is_same<T, float>::value;  // 3xTF32 products, scalar fragment loads
  constexpr int LD = row_pitch<T, D>();
  constexpr bool kQRegs = !kF32 && D <= 128;
  ATTNCORE_DYNAMIC_SMEM(smem_raw);
  T* Qs = reinterpret_cast<T*>(smem_raw);
  T* KVs = Qs + kBM * LD;  // stage s: K at KVs + 2 s BN LD, V right after it

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int gr = lane / 4, tq = lane % 4;
  FwdCta cta;
  if (!fwd_cta<kBM, kF32>(p, cta)) return;
  const int g = cta.g, h = cta.h, m0 = cta.m0, n_lo = cta.n_lo, n_hi = cta.n_hi;
  const Seq& sq = cta.sq;
  const bool vec = p.vec != 0;

  static_assert(!kSplitKV || STAGES == 1, "split K/V loads use one buffer each");
  auto load_k = [&](int n0, int stage) {
    tc::load_rows<T, BN, D, LD, kThreads>(KVs + stage * 2 * BN * LD, p.k, p.k_s, sq.b, sq.k0 + n0, g, h, n_hi - n0, p.K, vec);
  };
  auto load_v = [&](int n0, int stage) {
    tc::load_rows<T, BN, D, LD, kThreads>(KVs + (stage * 2 + 1) * BN * LD, p.v, p.v_s, sq.b, sq.k0 + n0, g, h, n_hi - n0, p.Kv, vec);
  };
  auto load_kv = [&](int n0, int stage) {
    load_k(n0, stage);
    load_v(n0, stage);
  };

  tc::load_rows<T, kBM, D, LD, kThreads>(Qs, p.q, p.q_s, sq.b, sq.q0 + m0, g, h, sq.qlen - m0, p.K, vec);
  if constexpr (kSplitKV) {  // two groups: Q and K, then V
    if (n_lo < n_hi) load_k(n_lo, 0);
    tc::cp_async_commit();
    if (n_lo < n_hi) load_v(n_lo, 0);
  } else {
    if (n_lo < n_hi) load_kv(n_lo, 0);
  }
  tc::cp_async_commit();

  // This warp's 16 rows and the keys any of them may see (kWarpMasks; none past the sequence's end)
  const int r0 = m0 + warp * 16;
  int w_lo = 0, w_hi = 0;
  if (kWarpMasks && r0 < sq.qlen) key_range(p, sq, r0, min(r0 + 16, sq.qlen), &w_lo, &w_hi);

  float o[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float m_r[2] = {-INFINITY, -INFINITY};
  float l_r[2] = {0.f, 0.f};
  uint32_t qf[kQRegs ? D / 16 : 1][4];
  // ldmatrix addresses (2-byte types): this warp's 16 query rows, and this lane's offsets into K and V tiles
  const uint32_t sQw = tc::smem_addr(Qs) + warp * 16 * LD * 2 + tc::a_off<LD>(lane);
  const uint32_t k_off = tc::b_off<LD>(lane), v_off = tc::t_off<LD>(lane);

  int stage = 0;
  for (int n0 = n_lo; n0 < n_hi; n0 += BN, stage ^= 1) {
    const bool more = n0 + BN < n_hi;
    if constexpr (kSplitKV) {
      tc::cp_async_wait<1>();  // K of tile n0 (and Q); its V may still be in flight
    } else {
      if (STAGES == 2 && more) load_kv(n0 + BN, stage ^ 1);  // the other stage was released by the last iteration's barrier
      tc::cp_async_commit();
      if (STAGES == 2 && more) {
        tc::cp_async_wait<1>();
      } else {
        tc::cp_async_wait<0>();
      }
    }
    __syncthreads();  // tile n0 (and Q) in place for every warp
    const int st = STAGES == 2 ? stage : 0;
    const T* Ks = KVs + st * 2 * BN * LD;
    const T* Vs = Ks + BN * LD;
    if (kQRegs && n0 == n_lo) {
#pragma unroll
      for (int kk = 0; kk < (kQRegs ? D / 16 : 0); ++kk) tc::ldsm<false>(qf[kk], sQw + kk * 32);
    }
    // kWarpMasks: a warp none of whose rows sees a key of the tile skips its products (every score
    // would be -inf: no change to m, l or O), and one whose rows all see every key takes the plain path,
    // where otherwise the CTA's 64 or 128 rows decide for every warp (near a causal diagonal most warps
    // then compute masked scores, and some compute only masked ones). Loads and barriers are unchanged.
    const bool skip = kWarpMasks && (w_lo >= w_hi || n0 >= w_hi || n0 + BN <= w_lo);
    float s[BN / 8][4];
#pragma unroll
    for (int i = 0; i < BN / 8; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
    if (!skip) {
      if constexpr (kF32) {
        tc::tf32_rows_rows<D, BN, LD>(s, Qs + warp * 16 * LD, Ks, gr, tq);
      } else if constexpr (kQRegs) {
        tc::h16_rows_rows<T, D, BN, LD>(s, qf, tc::smem_addr(Ks) + k_off);
      } else {
        tc::h16_rows_rows<T, D, BN, LD>(s, sQw, tc::smem_addr(Ks) + k_off);
      }

      // Tiles inside the band with no bias (most of them) take the plain path: the row maximum of the raw
      // scores, then one FMA and one exp2 per element. Tiles on a band edge or a sequence end, and every
      // tile with a bias, test each element against its row's key interval. m0 + kBM (r0 + 16), not the rows'
      // end in the sequence: a partial last query tile takes the masked path (tile_all_visible requires every
      // row inside the sequence).
      if (p.bias == nullptr && p.scale_log2 > 0.f &&
          (kWarpMasks ? tile_all_visible(p, sq, r0, r0 + 16, n0, n0 + BN) : tile_all_visible(p, sq, m0, m0 + kBM, n0, n0 + BN))) {
        online_softmax<false, T, BN, D>(p, sq, g, h, m0 + warp * 16 + gr, n0 + 2 * tq, s, o, m_r, l_r);
      } else {
        online_softmax<true, T, BN, D>(p, sq, g, h, m0 + warp * 16 + gr, n0 + 2 * tq, s, o, m_r, l_r);
      }
    }
    if constexpr (kSplitKV) {
      __syncthreads();  // every warp is done with K: the next tile's K loads during P V
      if (more) load_k(n0 + BN, 0);
      tc::cp_async_commit();
      tc::cp_async_wait<1>();  // V of tile n0
      __syncthreads();
    }
    if (!skip) {
      if constexpr (kF32) {
        tc::tf32_frag_rows<D, BN, LD>(o, s, Vs, gr, tq);
      } else {
        tc::h16_frag_rows<T, D, BN, LD>(o, s, tc::smem_addr(Vs) + v_off);
      }
    }
    __syncthreads();  // every warp is done with this stage before it is refilled
    if constexpr (kSplitKV) {
      if (more) load_v(n0 + BN, 0);  // during the next tile's Q K^T and softmax
      tc::cp_async_commit();
    } else {
      if (STAGES == 1 && more) load_kv(n0 + BN, 0);
    }
  }
  tc::cp_async_wait<0>();

  store_outputs<T, D>(p, sq, g, h, m0 + warp * 16 + gr, tq, o, m_r, l_r);
#else
  __trap();  // never launched: the host checks tc_compiled_for_device() first
#endif
}

// fp32 with "wide" warps: each warp owns 32 query rows (two m16 tiles) and a slice of D / CG of the head dim,
// so every K and V fragment it loads from shared memory and splits into tf32 parts serves two products instead
// of one (the loads and splits, not the tensor cores, bound the fp32 kernels: three instructions per split
// element, stop 16's Nsight Compute reading). RG row groups of 32 rows times CG column slices:
//   - S: a warp multiplies its rows of Q with the key tile over its slice of the head dim (partial scores);
//     with CG > 1 the partials of a row group meet in shared memory and every warp of the group adds them in
//     slice order, so each holds the same bits (IEEE addition is commutative: p0 + p1 == p1 + p0);
//   - each warp runs the online softmax of its 32 rows (the CG warps of a group the same one) and multiplies P
//     with its slice of V's columns; the warp of slice 0 writes the log-sum-exp.
// K and V in one buffer each, as kSplitKV: the next K loads during the softmax and P V, the next V during
// the next Q K^T. A row group none of whose rows sees any key of a tile skips it (both warps of a group decide
// alike); one whose rows see all of them takes the plain softmax. KG: chunk groups of the P V product.
template <int D, int BN, int RG, int CG>
constexpr int fwd_wide_smem_bytes() {
  return (32 * RG + 2 * BN) * row_pitch<float, D>() * 4 + (CG > 1 ? RG * CG * 32 * BN * 4 : 0);
}

template <int D, int BN, int RG, int CG, int KG>
__global__ void __launch_bounds__(RG * CG * 32) fwd_f32_wide_kernel(Params p) {
#if ATTNCORE_TC
  constexpr int kThreads = RG * CG * 32;
  constexpr int kBM = 32 * RG;
  constexpr int DC = D / CG;
  constexpr int LD = row_pitch<float, D>();
  constexpr int kNT = BN / 8;
  ATTNCORE_DYNAMIC_SMEM(smem_raw);
  float* Qs = reinterpret_cast<float*>(smem_raw);
  float* Ks = Qs + kBM * LD;
  float* Vs = Ks + BN * LD;
  float* Xs = Vs + BN * LD;  // CG > 1: each warp's partial scores, in fragment order (2 kNT float4 per lane)

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int gr = lane / 4, tq = lane % 4;
  const int rg = warp / CG, cg = warp % CG;
  FwdCta cta;
  if (!fwd_cta<kBM, true>(p, cta)) return;
  const int g = cta.g, h = cta.h, m0 = cta.m0, n_lo = cta.n_lo, n_hi = cta.n_hi;
  const Seq& sq = cta.sq;
  const bool vec = p.vec != 0;
  auto load_k = [&](int n0) {
    tc::load_rows<float, BN, D, LD, kThreads>(Ks, p.k, p.k_s, sq.b, sq.k0 + n0, g, h, n_hi - n0, p.K, vec);
  };
  auto load_v = [&](int n0) {
    tc::load_rows<float, BN, D, LD, kThreads>(Vs, p.v, p.v_s, sq.b, sq.k0 + n0, g, h, n_hi - n0, p.Kv, vec);
  };

  tc::load_rows<float, kBM, D, LD, kThreads>(Qs, p.q, p.q_s, sq.b, sq.q0 + m0, g, h, sq.qlen - m0, p.K, vec);
  if (n_lo < n_hi) load_k(n_lo);
  tc::cp_async_commit();  // Q and K
  if (n_lo < n_hi) load_v(n_lo);
  tc::cp_async_commit();

  const int r0 = m0 + rg * 32;  // this warp's rows, and the keys any of them may see (none past the sequence's end)
  int w_lo = 0, w_hi = 0;
  if (r0 < sq.qlen) key_range(p, sq, r0, min(r0 + 32, sq.qlen), &w_lo, &w_hi);

  float o[2][DC / 8][4];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
    for (int i = 0; i < DC / 8; ++i) o[mt][i][0] = o[mt][i][1] = o[mt][i][2] = o[mt][i][3] = 0.f;
  }
  float m_r[2][2] = {{-INFINITY, -INFINITY}, {-INFINITY, -INFINITY}};
  float l_r[2][2] = {{0.f, 0.f}, {0.f, 0.f}};

  for (int n0 = n_lo; n0 < n_hi; n0 += BN) {
    const bool more = n0 + BN < n_hi;
    const bool skip = w_lo >= w_hi || n0 >= w_hi || n0 + BN <= w_lo;
    tc::cp_async_wait<1>();  // K of tile n0 (and Q); its V may still be in flight
    __syncthreads();
    float s[2][kNT][4];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
      for (int i = 0; i < kNT; ++i) s[mt][i][0] = s[mt][i][1] = s[mt][i][2] = s[mt][i][3] = 0.f;
    }
    if (!skip) {
      tc::tf32_rows_with<DC, BN, LD, 2>(s, Qs + rg * 32 * LD + cg * DC, tc::SplitRowsB<LD>{Ks + cg * DC, gr, tq}, gr, tq);
      if constexpr (CG > 1) {
        float4* mine = reinterpret_cast<float4*>(Xs) + warp * 2 * kNT * 32 + lane;
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
          for (int nt = 0; nt < kNT; ++nt) mine[(mt * kNT + nt) * 32] = make_float4(s[mt][nt][0], s[mt][nt][1], s[mt][nt][2], s[mt][nt][3]);
        }
      }
    }
    __syncthreads();  // every warp is done with K, and the partial scores are in place
    if (more) load_k(n0 + BN);
    tc::cp_async_commit();
    if (!skip) {
      if constexpr (CG > 1) {  // the group's partials in slice order, this warp's own from its registers
        const float4* group = reinterpret_cast<const float4*>(Xs) + rg * CG * 2 * kNT * 32 + lane;
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
          for (int nt = 0; nt < kNT; ++nt) {
            const float4 own = make_float4(s[mt][nt][0], s[mt][nt][1], s[mt][nt][2], s[mt][nt][3]);
            float4 acc = cg == 0 ? own : group[(mt * kNT + nt) * 32];
#pragma unroll
            for (int c = 1; c < CG; ++c) {
              const float4 x = c == cg ? own : group[(c * 2 * kNT + mt * kNT + nt) * 32];
              acc.x += x.x;
              acc.y += x.y;
              acc.z += x.z;
              acc.w += x.w;
            }
            s[mt][nt][0] = acc.x;
            s[mt][nt][1] = acc.y;
            s[mt][nt][2] = acc.z;
            s[mt][nt][3] = acc.w;
          }
        }
      }
      const bool plain = p.bias == nullptr && p.scale_log2 > 0.f && tile_all_visible(p, sq, r0, r0 + 32, n0, n0 + BN);
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        if (plain) {
          online_softmax<false, float, BN, DC>(p, sq, g, h, r0 + mt * 16 + gr, n0 + 2 * tq, s[mt], o[mt], m_r[mt], l_r[mt]);
        } else {
          online_softmax<true, float, BN, DC>(p, sq, g, h, r0 + mt * 16 + gr, n0 + 2 * tq, s[mt], o[mt], m_r[mt], l_r[mt]);
        }
      }
    }
    tc::cp_async_wait<1>();  // V of tile n0
    __syncthreads();
    if (!skip) tc::tf32_frag_with<DC, BN, KG, 2>(o, s, tc::SplitFragB<LD>{Vs + cg * DC, gr, tq});
    __syncthreads();  // every warp is done with V (and with reading the partial scores)
    if (more) load_v(n0 + BN);
    tc::cp_async_commit();
  }
  tc::cp_async_wait<0>();
#pragma unroll
  for (int mt = 0; mt < 2; ++mt) store_outputs<float, DC>(p, sq, g, h, r0 + mt * 16 + gr, tq, o[mt], m_r[mt], l_r[mt], cg * DC, cg == 0);
#else
  __trap();  // never launched: the host checks tc_compiled_for_device() first
#endif
}

// fp32 with K and V split into tf32 parts once per CTA (tf32_tiles.cuh), 4 warps (64 queries), BN-key
// tiles in one buffer each. The next tile's K loads into registers during Q K^T and is split into shared
// memory once every warp is done with this tile's K; then the next V loads during the softmax and P V and
// is split in after the barrier that ends them (two barriers a tile, a third of a tile's registers
// staged at a time; the other CTA on the multiprocessor covers the stores). Q stays plain floats, split
// per step as in fwd_tc_kernel. The products and the softmax sum in the same order as
// fwd_tc_kernel<float, D, BN, ...>: the same output bits.
template <int D, int BN>
constexpr int fwd_f32_split_smem_bytes() {
  return rows_of<4>() * row_pitch<float, D>() * 4 + (tc::ksplit_words<D, BN>() + tc::vsplit_words<D, BN>()) * 4;
}

// kMinBlocks: __launch_bounds__'s minimum CTAs per multiprocessor, i.e. ptxas's register budget (65536 /
// (128 kMinBlocks), at most 255; 0: none given). The shared memory admits 2 CTAs per multiprocessor
// either way; ptxas's spills depend on it erratically (sm_90, CUDA 13.0): at D = 128, 84 bytes at 3
// (168 registers), 540 at 2 (timed: no faster than 3); at D = 64, none with 0 (192 registers), 132 with 1 or 2.
template <int D, int BN, int kMinBlocks>
__global__ void __launch_bounds__(128, kMinBlocks) fwd_f32_split_kernel(Params p) {
#if ATTNCORE_TC
  constexpr int kThreads = threads_of<4>();
  constexpr int kBM = rows_of<4>();
  constexpr int LD = row_pitch<float, D>();
  ATTNCORE_DYNAMIC_SMEM(smem_raw);
  float* Qs = reinterpret_cast<float*>(smem_raw);
  uint32_t* Ks = reinterpret_cast<uint32_t*>(Qs + kBM * LD);
  uint32_t* Vs = Ks + tc::ksplit_words<D, BN>();

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int gr = lane / 4, tq = lane % 4;
  FwdCta cta;
  if (!fwd_cta<kBM, true>(p, cta)) return;
  const int g = cta.g, h = cta.h, m0 = cta.m0, n_lo = cta.n_lo, n_hi = cta.n_hi;
  const Seq& sq = cta.sq;
  const bool vec = p.vec != 0;

  tc::load_rows<float, kBM, D, LD, kThreads>(Qs, p.q, p.q_s, sq.b, sq.q0 + m0, g, h, sq.qlen - m0, p.K, vec);
  tc::cp_async_commit();
  tc::Staged<D, BN, kThreads> stage;  // the next K or V tile
  if (n_lo < n_hi) {
    tc::load_k_stage(stage, p, sq, g, h, n_lo, n_hi - n_lo, vec);
    tc::store_k_split(stage, Ks);
    tc::load_v_stage(stage, p, sq, g, h, n_lo, n_hi - n_lo, vec);
    tc::store_v_split(stage, Vs);
  }

  float o[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float m_r[2] = {-INFINITY, -INFINITY};
  float l_r[2] = {0.f, 0.f};

  tc::cp_async_wait<0>();
  __syncthreads();  // Q and the first tile in place for every warp
  for (int n0 = n_lo; n0 < n_hi; n0 += BN) {
    const bool more = n0 + BN < n_hi;
    if (more) tc::load_k_stage(stage, p, sq, g, h, n0 + BN, n_hi - n0 - BN, vec);  // in flight during Q K^T
    float s[BN / 8][4];
#pragma unroll
    for (int i = 0; i < BN / 8; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
    tc::tf32_rows_presplit<D, BN, LD>(s, Qs + warp * 16 * LD, Ks, gr, tq);
    if (more) {
      __syncthreads();  // every warp is done with this K tile
      tc::store_k_split(stage, Ks);
      tc::load_v_stage(stage, p, sq, g, h, n0 + BN, n_hi - n0 - BN, vec);  // in flight during the softmax and P V
    }
    if (p.bias == nullptr && p.scale_log2 > 0.f && tile_all_visible(p, sq, m0, m0 + kBM, n0, n0 + BN)) {
      online_softmax<false, float, BN, D>(p, sq, g, h, m0 + warp * 16 + gr, n0 + 2 * tq, s, o, m_r, l_r);
    } else {
      online_softmax<true, float, BN, D>(p, sq, g, h, m0 + warp * 16 + gr, n0 + 2 * tq, s, o, m_r, l_r);
    }
    tc::tf32_frag_presplit<D, BN>(o, s, Vs, gr, tq);
    if (more) {
      __syncthreads();  // every warp is done with this V tile (and the next K tile is in place)
      tc::store_v_split(stage, Vs);  // in place for the next P V after that tile's first barrier
    }
  }
  store_outputs<float, D>(p, sq, g, h, m0 + warp * 16 + gr, tq, o, m_r, l_r);
#else
  __trap();  // never launched: the host checks tc_compiled_for_device() first
#endif
}

const char* g_fwd_variant = "none";  // fwd_tc_variant(): a name built once per kernel instance
const char* g_fwd_order = "none";    // fwd_tc_order()

template <int D, int BN, int STAGES, int W, bool kSplitKV, bool kWarpMasks>
const char* variant_name() {
  static const std::string name = "D=" + std::to_string(D) + " keys=" + std::to_string(BN) +
                                  " stages=" + (kSplitKV ? std::string("split-kv") : std::to_string(STAGES)) + " warps=" + std::to_string(W) +
                                  (kWarpMasks ? " warp-masks" : "");
  return name.c_str();
}

template <typename T, int D, int BN, int STAGES, int W, bool kSplitKV = false, bool kWarpMasks = false>
bool launch(const Params& p, cudaStream_t stream) {
  constexpr int kBM = rows_of<W>();
  constexpr int smem = fwd_smem_bytes<T, D, BN, STAGES, W>();
  auto kern = fwd_tc_kernel<T, D, BN, STAGES, W, kSplitKV, kWarpMasks>;
  if (!allow_smem(kern, smem)) return false;
  g_fwd_variant = variant_name<D, BN, STAGES, W, kSplitKV, kWarpMasks>();
  dim3 grid((p.max_q + kBM - 1) / kBM, p.num_seqs, p.G * p.H);
  ATTNCORE_LAUNCH(kern, grid, threads_of<W>(), smem, stream, p);
  return true;
}

template <int D, int BN, int kMinBlocks>
bool launch_f32_split(const Params& p, cudaStream_t stream) {
  constexpr int smem = fwd_f32_split_smem_bytes<D, BN>();
  auto kern = fwd_f32_split_kernel<D, BN, kMinBlocks>;
  if (!allow_smem(kern, smem)) return false;
  static const std::string name = "D=" + std::to_string(D) + " keys=" + std::to_string(BN) + " stages=tf32-split warps=4";
  g_fwd_variant = name.c_str();
  dim3 grid((p.max_q + rows_of<4>() - 1) / rows_of<4>(), p.num_seqs, p.G * p.H);
  ATTNCORE_LAUNCH(kern, grid, threads_of<4>(), smem, stream, p);
  return true;
}

template <int D, int BN, int RG, int CG, int KG>
bool launch_f32_wide(const Params& p, cudaStream_t stream) {
  constexpr int smem = fwd_wide_smem_bytes<D, BN, RG, CG>();
  auto kern = fwd_f32_wide_kernel<D, BN, RG, CG, KG>;
  if (!allow_smem(kern, smem)) return false;
  static const std::string name = "D=" + std::to_string(D) + " keys=" + std::to_string(BN) + " stages=split-kv warps=" + std::to_string(RG * CG) +
                                  " wide=" + std::to_string(RG) + "x" + std::to_string(CG);
  g_fwd_variant = name.c_str();
  dim3 grid((p.max_q + 32 * RG - 1) / (32 * RG), p.num_seqs, p.G * p.H);
  ATTNCORE_LAUNCH(kern, grid, RG * CG * 32, smem, stream, p);
  return true;
}

// CTA size: 8 warps (128 queries) share each K/V tile between more rows; 4 warps (64 queries) take half
// the registers and shared memory, so two CTAs fit on a multiprocessor and one's prologue and epilogue
// overlap the other's main loop. Measured on an H200 (benchmarks/RESULTS.md), once the epilogue was compact
// (pair stores, one row address): 4 warps win in bf16 at every head dim (D = 128: +2-21%, D = 256: -1% to +19%,
// most under a causal mask), and at D = 64 in fp16 too; in fp32 at D <= 128 (+0-13%, most under a causal mask), not
// at D = 256 (0.73-0.83x: that kernel is register-bound, and 4 warps share each split K/V tile between half
// as many rows). ATTNCORE_CUTLASS_FWD_WARPS=4 or 8 overrides
// the choice for measurements; it is read at the first forward of the process (other values are ignored).
inline int forced_warps() {
  static const int forced = [] {
    const char* env = std::getenv("ATTNCORE_CUTLASS_FWD_WARPS");
    const int w = env != nullptr ? std::atoi(env) : 0;
    return w == 4 || w == 8 ? w : 0;
  }();
  return forced;
}

template <typename T, int D>
int warps_for() {
  if (forced_warps() != 0) return forced_warps();
  return std::is_same<T, float>::value && D > 128 ? 8 : 4;
}

// Two stages where the shared memory allows (sm_80/sm_90), else one (sm_86/sm_89 at D = 256).
template <typename T, int D, int BN>
cudaError_t launch_any(const Params& p, cudaStream_t stream, bool* launched) {
  if (warps_for<T, D>() == 4) {
    *launched = launch<T, D, BN, 2, 4>(p, stream) || launch<T, D, BN, 1, 4>(p, stream);
  } else {
    *launched = launch<T, D, BN, 2, 8>(p, stream) || launch<T, D, BN, 1, 8>(p, stream);
  }
  return *launched ? cudaGetLastError() : cudaSuccess;
}

// fp32 key tiles (ATTNCORE_CUTLASS_FP32_FWD_KEYS, read at every forward: comma-separated "head_dim=keys"
// entries, spaces ignored; "64=128", "128=16" and "256=32" are recognized; unset = "64=128,256=32"; ""
// selects 64, 32 and 16 keys). Measured on an H200 (benchmarks/RESULTS.md, 2026-12-01):
//   256=32 (default): 32-key tiles instead of 16, K and V loads interleaved (kSplitKV, the same 199680
//     bytes): each tf32 split of a Q fragment serves 4 key columns instead of 2 and the output is rescaled
//     half as often (about 10% fewer instructions per mma by count), against spills (ptxas of CUDA 13.0,
//     sm_90: 24 bytes stored, 80 loaded; the 16-key two-stage kernel 4 and 4) and a pipeline with four
//     barriers a tile. +8-11% on all 8 cells of the fp32 forward grid at K = 256 (0.87-1.06x SDPA
//     efficient over two runs, against 0.80-0.96x). Only with 8-warp CTAs (the default at D = 256;
//     ATTNCORE_CUTLASS_FWD_WARPS=4 leaves 16-key tiles).
//   64=128 (default): 128-key split K/V tiles at D = 64 in the shared memory of the two-stage 64-key tiles
//     (87040 bytes: two CTAs per multiprocessor), 183 registers against 146, no spills (sm_90), for calls
//     without a band (causal, local) and with at least kWideKeysMin keys (the longest sequence's): +6-7%
//     on the 4 non-causal cells, M = 512-4096 (1.18-1.19x SDPA efficient). Under a causal mask it lost
//     1-22% (each 64-query tile's last key tile is mostly masked, and the short rows have few tiles), and
//     with few keys a tile would be mostly padding, so those calls keep 64-key tiles. 4-warp CTAs only.
//   128=16 (opt-in): 16-key tiles instead of 32: 67584 bytes of shared memory and 132 registers (ptxas,
//     sm_90) against 101376 and 168, so three 4-warp CTAs fit a multiprocessor instead of two, for twice the
//     tile steps (barriers, rescales): 2-5% slower than the 32-key tiles on all 8 cells. (64-key split K/V
//     tiles at D = 128, 185 registers, two CTAs: 5-8% slower on all 8; not kept.)
constexpr int kWideKeysMin = 512;  // plugin.py WIDE_KEYS_MIN

// K and V split into tf32 parts once per CTA (fwd_f32_split_kernel), ATTNCORE_CUTLASS_FP32_FWD_SPLIT, read at
// every forward: comma-separated padded head dims, "64" (64-key tiles) and "128" (32-key tiles); unset = none.
// An opt-in, not a default: measured on an H200 (benchmarks/RESULTS.md, stop 18) 10-16% slower than the
// default kernels at 64 and 29-30% at 128, with more instructions issued, not fewer (Nsight Compute, K = 128,
// M = 4096: 6.56 G against 6.24 G, short-scoreboard stalls 0.99 per issue). Bit-identical outputs to the kernels
// with the same tiles, so it is kept as the base of a next attempt. Not with 8 forced warps (4-warp CTAs only).
inline bool fp32_fwd_split(const char* dim) { return env_list_has("ATTNCORE_CUTLASS_FP32_FWD_SPLIT", "", dim); }
inline bool fp32_fwd_wide(const char* entry) { return env_list_has("ATTNCORE_CUTLASS_FP32_FWD_WIDE", "", entry); }
inline bool fp32_fwd_keys(const char* entry) { return env_list_has("ATTNCORE_CUTLASS_FP32_FWD_KEYS", "64=128,256=32", entry); }

// Wide warps (fwd_f32_wide_kernel) by padded head dim, ATTNCORE_CUTLASS_FP32_FWD_WIDE, read at every forward:
// comma-separated entries "dim=GxS" or "dim=GxS/keys" (G row groups of 32 queries, S slices of the head dim,
// 32-key tiles unless named), spaces ignored; the launchers try their entries in the fixed order below, and
// the first one the list names that fits the shared memory runs; "" = none. Unset: at 128, 4 x 1 for calls
// without a causal or local band and 2 x 2 for calls with one, unless ATTNCORE_CUTLASS_FP32_FWD_KEYS is set
// (then its key tiles run, as they did before); none at 256. Tried after the opt-ins that name their kernels
// (ATTNCORE_CUTLASS_FWD_WARP_MASKS for banded calls, ATTNCORE_CUTLASS_FP32_FWD_SPLIT), and vetoed by
// ATTNCORE_CUTLASS_FWD_WARPS. Measured on an H200 (benchmarks/RESULTS.md, stop 22; fp32 forward, M =
// 512-4096, against the default kernels of two runs that agreed within 0.6%):
//   128=4x1 (one slice: no exchange; 101376 bytes, two CTAs per multiprocessor, ptxas 255 registers and
//     92 bytes of spills): +5-9% without a mask (1.05-1.06x SDPA efficient), but its 128-row CTAs compute
//     more masked tiles under a causal one: -13% at M = 512 to +3% at 4096.
//   128=2x2 (64-row CTAs; 83968 bytes, two CTAs, no spills): +4-5% without a mask, -1% to +3% under a causal
//     one (1.02, 1.02, 0.99, 0.99x SDPA efficient).
//   256=4x2 (232448 bytes: sm_90's whole opt-in; one CTA, 20 bytes of spills): -6% to +0.4% without a mask,
//     +0-1% causal: an opt-in. (Four slices of 64-row CTAs, 256=2x4, lost 11-13% without a mask and up to 5%
//     causal; two row groups of one slice at 128, 128=2x1, 12-33%: both removed.) Why halving the splits buys
//     nothing at 256 was not measured (Nsight Compute would say): both kernels there run one CTA per
//     multiprocessor, and the exchange and each slice's own softmax cost about what the splits save.
//   256=2x2/16 (64-row CTAs of 4 warps, 16-key tiles, 108032 bytes: two CTAs per multiprocessor, fewer
//     masked tiles under a causal mask): -6% without a mask, -3% to +3% causal; an opt-in.
// false: none named (or, unset, none at this head dim) or none fits.
inline bool launch_wide_256(const Params& p, cudaStream_t stream) {
  return (fp32_fwd_wide("256=4x2") && launch_f32_wide<256, 32, 4, 2, 2>(p, stream)) ||
         (fp32_fwd_wide("256=2x2/16") && launch_f32_wide<256, 16, 2, 2, 1>(p, stream));
}
inline bool launch_wide_128(const Params& p, cudaStream_t stream) {
  if (std::getenv("ATTNCORE_CUTLASS_FP32_FWD_WIDE") == nullptr) {  // the default: by the call's band
    if (std::getenv("ATTNCORE_CUTLASS_FP32_FWD_KEYS") != nullptr) return false;  // key tiles asked for by name
    const bool banded = has_band(p);
    return banded ? launch_f32_wide<128, 32, 2, 2, 1>(p, stream) : launch_f32_wide<128, 32, 4, 1, 2>(p, stream);
  }
  return (fp32_fwd_wide("128=4x1") && launch_f32_wide<128, 32, 4, 1, 2>(p, stream)) ||
         (fp32_fwd_wide("128=2x2") && launch_f32_wide<128, 32, 2, 2, 1>(p, stream));
}

template <typename T>
cudaError_t dispatch(const Params& p, cudaStream_t stream, bool* launched) {
  const int d = max(p.K, p.Kv);
  // fp32 at D = 128: narrower key tiles than fp16/bf16, since the split operands take registers; at 256 and
  // 64, split K/V tiles where they were measured faster (see above; ptxas, sm_90: the 256 ones spill)
  constexpr bool kF32 = std::is_same<T, float>::value;
  if constexpr (kF32) {  // K and V split into tf32 parts once per CTA: an opt-in, slower (fp32_fwd_split)
    if (forced_warps() != 8) {
      if (d <= 64 && fp32_fwd_split("64")) {
        *launched = launch_f32_split<64, 64, 0>(p, stream);
        if (*launched) return cudaGetLastError();
      } else if (d > 64 && d <= 128 && fp32_fwd_split("128")) {
        *launched = launch_f32_split<128, 32, 3>(p, stream);
        if (*launched) return cudaGetLastError();
      }
    }
  }
  if constexpr (kF32) {  // wide warps (fwd_f32_wide_kernel): 32 rows and a slice of the head dim each
    if (forced_warps() == 0 && d > 64) {
      const bool launched_wide = d > 128 ? launch_wide_256(p, stream) : launch_wide_128(p, stream);
      if (launched_wide) {
        *launched = true;
        return cudaGetLastError();
      }
    }
  }
  if constexpr (kF32) {  // split K/V tiles of 128 keys in the shared memory of two 64-key stages
    const bool banded = has_band(p);
    if (d <= 64 && !banded && p.max_k >= kWideKeysMin && warps_for<T, 64>() == 4 && fp32_fwd_keys("64=128")) {
      *launched = launch<T, 64, 128, 1, 4, true>(p, stream);
      if (*launched) return cudaGetLastError();
    }
  }
  if (d <= 64) return launch_any<T, 64, 64>(p, stream, launched);
  if constexpr (kF32) {
    if (d <= 128 && fp32_fwd_keys("128=16")) return launch_any<T, 128, 16>(p, stream, launched);
    if (d > 128 && d <= 256 && warps_for<T, 256>() == 8 && fp32_fwd_keys("256=32")) {
      *launched = launch<T, 256, 32, 1, 8, true>(p, stream);
      if (*launched) return cudaGetLastError();
    }
  }
  if (d <= 128) return launch_any<T, 128, kF32 ? 32 : 64>(p, stream, launched);
  if (d <= 256) return launch_any<T, 256, kF32 ? 16 : 32>(p, stream, launched);
  return cudaSuccess;
}

// Per-warp key-tile classification (kWarpMasks), an opt-in: ATTNCORE_CUTLASS_FWD_WARP_MASKS=1, read at every
// forward. Timed on an H200 (benchmarks/RESULTS.md, stop 18) and not adopted: fp32 causal 2-4% slower at
// D = 64, 10-11% at 128 (its instance spills: 8/16 bytes), -3% to +2% at 256; bf16 causal -8% to +14%, inside
// that run's spread for identical kernels (bf16 non-causal cells, which run the default kernels both times,
// moved -3% to +13%). Under a causal mask it skips the products of warps whose rows see none of a tile's
// keys (with 128-row CTAs and 32-key tiles, 12 of the 32 warp-tiles on a diagonal) and takes the plain path
// for warps whose rows see all of them. Separate kernel instances, only for calls with a band (causal,
// local; without one there is nothing to classify) on each dtype's default tile configuration: not with
// ATTNCORE_CUTLASS_FWD_WARPS or, in fp32, ATTNCORE_CUTLASS_FP32_FWD_KEYS set, nor where those tiles do not
// fit the shared memory (then the default kernels run).
template <typename T>
cudaError_t dispatch_warp_masks(const Params& p, cudaStream_t stream, bool* launched) {
  constexpr bool kF32 = std::is_same<T, float>::value;
  const bool banded = has_band(p);
  if (!banded || forced_warps() != 0 || (kF32 && std::getenv("ATTNCORE_CUTLASS_FP32_FWD_KEYS") != nullptr)) return cudaSuccess;
  const int d = max(p.K, p.Kv);
  if (d <= 64) {
    *launched = launch<T, 64, 64, 2, 4, false, true>(p, stream);
  } else if (d <= 128) {
    *launched = launch<T, 128, kF32 ? 32 : 64, 2, 4, false, true>(p, stream);
  } else if (d <= 256) {
    if constexpr (kF32) {
      *launched = launch<T, 256, 32, 1, 8, true, true>(p, stream);
    } else {
      *launched = launch<T, 256, 32, 2, 4, false, true>(p, stream);
    }
  }
  return *launched ? cudaGetLastError() : cudaSuccess;
}

// The fp32 CTA order (fwd_cta; fp16/bf16 run head-major), ATTNCORE_CUTLASS_FWD_ORDER, read at every forward:
// "rows" (row-block major) or "heads" (head-major); unset or anything else: row-block major for calls with a
// causal or local band, head-major without one (plugin.py's forward_order mirrors this). Only a band makes the
// work of row blocks differ, and fp32 runs at a tenth of fp16/bf16's tensor-core rate, so the L2 traffic of
// keys and values read by CTAs of many heads at once is cheap there. Measured on an H200
// (benchmarks/RESULTS.md, stop 23; fp32 forward, M = 512-4096, both orders in one call, then interleaved in one
// process): causal +2.7% to +3.2% at K = 64, +5.2% to +6.7% at K = 128, +7.7% to +13.2% at K = 256; without a
// mask (nothing to reorder) within 1%. (bf16 in one run of
// each order, while the clock drifted: -6% to +11% under a causal mask, the gains at M = 4096; not adopted.)
bool fwd_rows_first(const Params& p, DType dt) {
  return dt == DType::kF32 && env_rows_first("ATTNCORE_CUTLASS_FWD_ORDER", has_band(p));
}

}  // namespace

const char* fwd_tc_variant() { return g_fwd_variant; }
const char* fwd_tc_order() { return g_fwd_order; }

cudaError_t fwd_tc(const Params& call, DType dt, cudaStream_t stream, bool* launched) {
  *launched = false;
  Params p = call;
  p.rows_first = fwd_rows_first(call, dt) ? 1 : 0;
  g_fwd_order = p.rows_first ? "rows" : "heads";
  if (env_list_has("ATTNCORE_CUTLASS_FWD_WARP_MASKS", "", "1")) {
    cudaError_t err = cudaSuccess;
    switch (dt) {
      case DType::kF16: err = dispatch_warp_masks<__half>(p, stream, launched); break;
      case DType::kBF16: err = dispatch_warp_masks<__nv_bfloat16>(p, stream, launched); break;
      case DType::kF32: err = dispatch_warp_masks<float>(p, stream, launched); break;
    }
    if (*launched || err != cudaSuccess) return err;
  }
  switch (dt) {
    case DType::kF16: return dispatch<__half>(p, stream, launched);
    case DType::kBF16: return dispatch<__nv_bfloat16>(p, stream, launched);
    case DType::kF32: return dispatch<float>(p, stream, launched);
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
