// attncore-cutlass: the call as the kernels see it. Plain C++ (the host bindings include it too).
//
// Conventions: q/k/v/out are [B, M, G, H, K] views with a contiguous last dim (strides in elements,
// stride 0 allowed on G/H for shared keys and values); the LSE is [B, G, H, Mq] float32 (natural log);
// the bias is [B, G, H, Mq, Mk] through its (broadcast) strides.
#pragma once

#include <stdint.h>

namespace attncore {

constexpr int kBig = 1 << 30;  // an absent band side

struct Params {
  const void* q;
  const void* k;
  const void* v;
  const void* bias;  // nullptr: no tensor bias
  void* out;         // [B, Mq, G, H, Kv]; float when out_f32 else the inputs' type
  float* lse;        // [B, G, H, Mq] contiguous; nullptr: not wanted
  int64_t q_s[4], k_s[4], v_s[4], o_s[4];  // strides of B, M, G, H
  int64_t b_s[5];                           // bias strides of B, G, H, Mq, Mk
  int B, G, H, Mq, Mk, K, Kv;
  int out_f32;   // out is float32 (else the inputs' type)
  int bias_f32;  // the bias is float32 (else the inputs' type)
  float scale;       // softmax scale
  float scale_log2;  // scale * log2(e)
  // Sequences. varlen == 0: sequence s is batch element s (queries [0, Mq), keys [0, Mk)).
  // varlen == 1 (B == 1): sequence s owns queries [seq_q[s], seq_q[s+1]) and keys [seq_k[s], seq_k[s] + seq_klen[s]).
  int varlen;
  int num_seqs;
  int max_q, max_k;
  const int* seq_q;
  const int* seq_k;
  const int* seq_klen;
  // Band, in a sequence's local indices: key j is visible to query i iff lo <= j - i - shift <= hi,
  // shift = klen - qlen when bottom_right else 0.
  int band_lo, band_hi, bottom_right;
  // vectorized (16-byte) loads are safe: every row stride and base is 16-byte aligned and K, Kv % (16 / elem) == 0
  int vec;
  // Forward CTA order (fwd_tc.cu, fwd_cta): 0 head-major (a (sequence, head)'s row blocks launched together, the
  // longest first), 1 row-block major (the longest row block of every (sequence, head) first, then the next).
  int rows_first;
};

// Whether the call has a causal or local band (either side present).
inline bool has_band(const Params& p) { return p.band_lo > -kBig || p.band_hi < kBig; }

// Backward-only inputs and outputs (the forward's Params is embedded).
struct BwdParams {
  Params f;
  const void* dout;  // [B, Mq, G, H, Kv] in the inputs' type
  const float* lse2;   // [B, G, H, Mq]: LSE in base 2 (-inf for rows that see no key)
  const float* delta;  // [B, G, H, Mq]: rowsum(dO * O) - grad_lse
  void* dq;            // [B, Mq, G, H, K] contiguous
  void* dk;            // [B, Mk_rows, G, H, K] contiguous (Mk_rows: Mk, or sum(klen) when rows are not direct)
  void* dv;            // [B, Mk_rows, G, H, Kv] contiguous
  void* dbias;         // [B, G, H, Mq, Mk] contiguous, pre-zeroed; nullptr: not wanted
  int dbias_f32;       // dbias element type: float (1) or the inputs' type (0)
  int64_t do_s[4];
  int64_t dq_s[4], dk_s[4], dv_s[4];
  const int* seq_kw;   // first dK/dV row of each sequence (== seq_k when rows are direct)
  int deterministic;   // 0: kernels may add dQ atomically (fp32 tensor-core kernels), 1: bitwise-reproducible order
  // deterministic fp32 with dQ added by the dK/dV CTAs in a fixed order (bwd_tc_dq_splits): CTAs per (sequence,
  // head), each adding the dQ of its key blocks, in order, into its own slice of dq (0: the two-kernel order)
  int dq_splits;
  int64_t dq_slice;    // elements from one CTA's dq slice to the next (0 with one slice: dq itself)
};

// The backward's row statistics, from the forward's output and LSE (one pass, before the backward kernels):
// delta = rowsum(dO * O) - grad_lse and lse2 = LSE * log2(e) (+inf for rows that saw no key, so that
// exp2(s - lse2) is 0 there whatever s is).
struct PrepParams {
  const void* dout;      // [B, Mq, G, H, Kv] in the inputs' type
  const void* out;       // [B, Mq, G, H, Kv] in the inputs' type
  const float* lse;      // [B, G, H, Mq] contiguous, natural log
  const float* grad_lse; // [B, G, H, Mq] contiguous; nullptr: none
  float* delta;          // [B, G, H, Mq] contiguous
  float* lse2;           // [B, G, H, Mq] contiguous
  int64_t do_s[4], o_s[4];
  int B, G, H, Mq, Kv;
};

}  // namespace attncore
