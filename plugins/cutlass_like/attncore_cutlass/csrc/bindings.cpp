// Python bindings: validate what the Python launcher hands over (it has already validated the
// user's inputs), fill Params, pick the tensor-core or the portable kernel, launch on the current stream.
#include <torch/extension.h>

// ATTNCORE_EMULATE: the CPU emulation build (emulate.h): CPU tensors, no device guard, no stream.
#ifdef ATTNCORE_EMULATE
#include <cuda_runtime.h>
#define ATTNCORE_DEVICE_GUARD(t)
#define ATTNCORE_STREAM() (cudaStream_t{nullptr})
#define ATTNCORE_ON_DEVICE(t) ((t).is_cpu())
#else
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#define ATTNCORE_DEVICE_GUARD(t) const c10::cuda::CUDAGuard guard((t).device())
#define ATTNCORE_STREAM() (c10::cuda::getCurrentCUDAStream())
#define ATTNCORE_ON_DEVICE(t) ((t).is_cuda())
#endif

#include <optional>
#include <string>
#include <vector>

#include "kernels.h"

namespace {

using attncore::BwdParams;
using attncore::DType;
using attncore::Params;

DType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kF32;
    case at::kHalf: return DType::kF16;
    case at::kBFloat16: return DType::kBF16;
    default: TORCH_CHECK(false, "attncore-cutlass: expected float32, float16 or bfloat16 inputs, found ", t.scalar_type());
  }
  return DType::kF32;
}

void strides4(int64_t* dst, const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 5, "attncore-cutlass: ", name, " must be [B, M, G, H, K], found ", t.dim(), " dims");
  TORCH_CHECK(t.stride(4) == 1 || t.size(4) == 1, "attncore-cutlass: ", name, " needs a contiguous last dim");
  for (int i = 0; i < 4; ++i) dst[i] = t.stride(i);
}

void check(cudaError_t e, const char* what) {
  TORCH_CHECK(e == cudaSuccess, "attncore-cutlass: ", what, " failed: ", cudaGetErrorString(e));
}

const int* opt_int_ptr(const std::optional<at::Tensor>& t) {
  if (!t.has_value()) return nullptr;
  TORCH_CHECK(t->scalar_type() == at::kInt && t->is_contiguous(), "attncore-cutlass: sequence arrays must be contiguous int32");
  return t->data_ptr<int>();
}

Params make_params(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const std::optional<at::Tensor>& bias, const at::Tensor& out,
                   const std::optional<at::Tensor>& lse, const std::optional<at::Tensor>& seq_q, const std::optional<at::Tensor>& seq_k,
                   const std::optional<at::Tensor>& seq_klen, int64_t num_seqs, int64_t max_q, int64_t max_k, int64_t band_lo, int64_t band_hi,
                   bool bottom_right, double scale, bool vec) {
  Params p{};
  TORCH_CHECK(ATTNCORE_ON_DEVICE(q) && k.device() == q.device() && v.device() == q.device() && out.device() == q.device(),
              "attncore-cutlass: q, k, v and out must be on one CUDA device");
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(), "attncore-cutlass: q, k, v must share a dtype");
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.out = out.data_ptr();
  strides4(p.q_s, q, "query");
  strides4(p.k_s, k, "key");
  strides4(p.v_s, v, "value");
  strides4(p.o_s, out, "out");
  p.B = (int)q.size(0);
  p.Mq = (int)q.size(1);
  p.G = (int)q.size(2);
  p.H = (int)q.size(3);
  p.K = (int)q.size(4);
  p.Mk = (int)k.size(1);
  p.Kv = (int)v.size(4);
  TORCH_CHECK(p.K <= 256 && p.Kv <= 256, "attncore-cutlass: head dims up to 256, found ", p.K, " and ", p.Kv);
  TORCH_CHECK(out.scalar_type() == q.scalar_type() || out.scalar_type() == at::kFloat, "attncore-cutlass: out must be the inputs' dtype or float32");
  p.out_f32 = out.scalar_type() == at::kFloat && q.scalar_type() != at::kFloat ? 1 : 0;
  if (bias.has_value()) {
    const at::Tensor& b = *bias;
    TORCH_CHECK(b.dim() == 5, "attncore-cutlass: bias must be [B, G, H, Mq, Mk]");
    TORCH_CHECK(b.scalar_type() == q.scalar_type() || b.scalar_type() == at::kFloat, "attncore-cutlass: bias must be the inputs' dtype or float32");
    p.bias = b.data_ptr();
    for (int i = 0; i < 5; ++i) p.b_s[i] = b.stride(i);
    p.bias_f32 = b.scalar_type() == at::kFloat && q.scalar_type() != at::kFloat ? 1 : 0;
  }
  if (lse.has_value()) {
    TORCH_CHECK(lse->scalar_type() == at::kFloat && lse->is_contiguous(), "attncore-cutlass: lse must be contiguous float32 [B, G, H, Mq]");
    p.lse = lse->data_ptr<float>();
  }
  p.scale = (float)scale;
  p.scale_log2 = (float)(scale * 1.4426950408889634);
  p.varlen = seq_q.has_value() ? 1 : 0;
  p.seq_q = opt_int_ptr(seq_q);
  p.seq_k = opt_int_ptr(seq_k);
  p.seq_klen = opt_int_ptr(seq_klen);
  TORCH_CHECK(!p.varlen || (p.seq_k != nullptr && p.seq_klen != nullptr && p.B == 1), "attncore-cutlass: incomplete sequence description");
  p.num_seqs = (int)num_seqs;
  p.max_q = (int)max_q;
  p.max_k = (int)max_k;
  p.band_lo = (int)std::max<int64_t>(band_lo, -attncore::kBig);
  p.band_hi = (int)std::min<int64_t>(band_hi, attncore::kBig);
  p.bottom_right = bottom_right ? 1 : 0;
  p.vec = vec ? 1 : 0;
  return p;
}

std::string forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const std::optional<at::Tensor>& bias, const at::Tensor& out,
                    const std::optional<at::Tensor>& lse, const std::optional<at::Tensor>& seq_q, const std::optional<at::Tensor>& seq_k,
                    const std::optional<at::Tensor>& seq_klen, int64_t num_seqs, int64_t max_q, int64_t max_k, int64_t band_lo, int64_t band_hi,
                    bool bottom_right, double scale, bool vec, bool allow_tc) {
  ATTNCORE_DEVICE_GUARD(q);
  Params p = make_params(q, k, v, bias, out, lse, seq_q, seq_k, seq_klen, num_seqs, max_q, max_k, band_lo, band_hi, bottom_right, scale, vec);
  if (p.num_seqs == 0 || p.max_q == 0 || p.G * p.H == 0) return "none";
  const DType dt = dtype_of(q);
  cudaStream_t stream = ATTNCORE_STREAM();
  if (allow_tc && attncore::tc_compiled_for_device()) {  // fp32 too: 3xTF32, fp32 accuracy
    bool launched = false;
    check(attncore::fwd_tc(p, dt, stream, &launched), "forward (tensor cores)");
    if (launched) return "tc";
  }
  check(attncore::fwd_simt(p, dt, stream), "forward (portable)");
  return "simt";
}

std::string backward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const std::optional<at::Tensor>& bias, const at::Tensor& dout,
                     const at::Tensor& lse2, const at::Tensor& delta, const at::Tensor& dq, const at::Tensor& dk, const at::Tensor& dv,
                     const std::optional<at::Tensor>& dbias, const std::optional<at::Tensor>& seq_q, const std::optional<at::Tensor>& seq_k,
                     const std::optional<at::Tensor>& seq_klen, const std::optional<at::Tensor>& seq_kw, int64_t num_seqs, int64_t max_q,
                     int64_t max_k, int64_t band_lo, int64_t band_hi, bool bottom_right, double scale, bool vec, bool allow_tc,
                     bool deterministic) {
  ATTNCORE_DEVICE_GUARD(q);
  BwdParams bp{};
  bp.f = make_params(q, k, v, bias, dq, std::nullopt, seq_q, seq_k, seq_klen, num_seqs, max_q, max_k, band_lo, band_hi, bottom_right, scale, vec);
  bp.f.out = nullptr;
  TORCH_CHECK(dout.scalar_type() == q.scalar_type(), "attncore-cutlass: grad_out must have the inputs' dtype");
  TORCH_CHECK(lse2.scalar_type() == at::kFloat && lse2.is_contiguous() && delta.scalar_type() == at::kFloat && delta.is_contiguous(),
              "attncore-cutlass: lse2 and delta must be contiguous float32 [B, G, H, Mq]");
  for (const at::Tensor* t : {&dq, &dk, &dv})
    TORCH_CHECK(t->scalar_type() == q.scalar_type() && t->is_contiguous(), "attncore-cutlass: gradients must be contiguous, in the inputs' dtype");
  strides4(bp.do_s, dout, "grad_out");
  strides4(bp.dq_s, dq, "dq");
  strides4(bp.dk_s, dk, "dk");
  strides4(bp.dv_s, dv, "dv");
  bp.dout = dout.data_ptr();
  bp.lse2 = lse2.data_ptr<float>();
  bp.delta = delta.data_ptr<float>();
  bp.dq = dq.data_ptr();
  bp.dk = dk.data_ptr();
  bp.dv = dv.data_ptr();
  if (dbias.has_value()) {
    TORCH_CHECK(dbias->is_contiguous() && (dbias->scalar_type() == q.scalar_type() || dbias->scalar_type() == at::kFloat),
                "attncore-cutlass: dbias must be contiguous [B, G, H, Mq, Mk], float32 or the inputs' dtype");
    bp.dbias = dbias->data_ptr();
    bp.dbias_f32 = dbias->scalar_type() == at::kFloat && q.scalar_type() != at::kFloat ? 1 : 0;
  }
  bp.seq_kw = opt_int_ptr(seq_kw);
  bp.deterministic = deterministic ? 1 : 0;  // else fp32 kernels may add into dq, which must then hold zeros
  if (bp.f.num_seqs == 0 || bp.f.G * bp.f.H == 0) return "none";
  const DType dt = dtype_of(q);
  cudaStream_t stream = ATTNCORE_STREAM();
  if (allow_tc && attncore::tc_compiled_for_device()) {  // fp32 too: 3xTF32, fp32 accuracy
    // deterministic fp32: dQ added in a fixed order by the dK/dV CTAs, into dq (zeroed) or into zeroed slices,
    // which at::sum_out adds below in an order fixed for the shape (not necessarily slice by slice)
    at::Tensor slices;
    if (deterministic && dt == DType::kF32) {
      bp.dq_splits = attncore::bwd_tc_dq_splits(bp);
      if (bp.dq_splits == 1) {
        dq.zero_();
      } else if (bp.dq_splits > 1) {
        slices = at::zeros({bp.dq_splits, dq.numel()}, dq.options());
        bp.dq = slices.data_ptr();
        bp.dq_slice = dq.numel();
      }
    }
    bool launched = false;
    check(attncore::bwd_tc(bp, dt, stream, &launched), "backward (tensor cores)");
    if (launched) {
      if (slices.defined()) {  // the slices summed in a fixed order, straight into dq
        at::Tensor flat = dq.view({-1});
        at::sum_out(flat, slices, {0});
      }
      return "tc";
    }
    bp.dq = dq.data_ptr();  // the portable kernels write dq itself
    bp.dq_splits = 0;
  }
  check(attncore::bwd_simt(bp, dt, stream), "backward (portable)");
  return "simt";
}

void prepare(const at::Tensor& dout, const at::Tensor& out, const at::Tensor& lse, const std::optional<at::Tensor>& grad_lse, const at::Tensor& delta,
             const at::Tensor& lse2) {
  ATTNCORE_DEVICE_GUARD(out);
  attncore::PrepParams pp{};
  TORCH_CHECK(ATTNCORE_ON_DEVICE(out) && dout.device() == out.device() && lse.device() == out.device() && delta.device() == out.device() &&
                  lse2.device() == out.device(),
              "attncore-cutlass: grad_out, out, lse, delta and lse2 must be on one CUDA device");
  TORCH_CHECK(dout.scalar_type() == out.scalar_type(), "attncore-cutlass: grad_out and out must share a dtype, found ", dout.scalar_type(), " and ",
              out.scalar_type());
  TORCH_CHECK(dout.sizes() == out.sizes(), "attncore-cutlass: grad_out and out must have one shape");
  strides4(pp.do_s, dout, "grad_out");
  strides4(pp.o_s, out, "out");
  pp.B = (int)out.size(0);
  pp.Mq = (int)out.size(1);
  pp.G = (int)out.size(2);
  pp.H = (int)out.size(3);
  pp.Kv = (int)out.size(4);
  const std::vector<int64_t> stats{out.size(0), out.size(2), out.size(3), out.size(1)};
  for (const at::Tensor* t : {&lse, &delta, &lse2})
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous() && t->sizes() == at::IntArrayRef(stats), "attncore-cutlass: lse, delta and lse2 must be contiguous float32 [B, G, H, Mq]");
  if (grad_lse.has_value()) {
    TORCH_CHECK(grad_lse->scalar_type() == at::kFloat && grad_lse->is_contiguous() && grad_lse->sizes() == at::IntArrayRef(stats) && grad_lse->device() == out.device(),
                "attncore-cutlass: grad_lse must be contiguous float32 [B, G, H, Mq]");
    pp.grad_lse = grad_lse->data_ptr<float>();
  }
  pp.dout = dout.data_ptr();
  pp.out = out.data_ptr();
  pp.lse = lse.data_ptr<float>();
  pp.delta = delta.data_ptr<float>();
  pp.lse2 = lse2.data_ptr<float>();
  check(attncore::bwd_prep(pp, dtype_of(out), ATTNCORE_STREAM()), "backward statistics");
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "attncore-cutlass CUDA kernels (see attncore_cutlass._launch for the Python side)";
  m.def("forward", &forward, "attention forward; returns the kernel family that ran ('tc' or 'simt')");
  m.def("backward", &backward,
        "attention backward; returns the kernel family that ran ('tc' or 'simt'); unless deterministic, dq must hold zeros");
  m.def("prepare", &prepare, "the backward's delta = rowsum(grad_out * out) - grad_lse and base-2 LSE, into delta and lse2");
  m.def("tc_compiled_for_device", &attncore::tc_compiled_for_device, "whether the running code has tensor-core kernel bodies (built for sm_80+)");
  m.def("last_backward_variant", [] { return std::string(attncore::bwd_tc_variant()); },
        "how the last tensor-core backward computed dK and dV: 'one', 'split', 'paired' ('none' before any)");
  m.def("last_forward_variant", [] { return std::string(attncore::fwd_tc_variant()); },
        "the tile configuration of the last tensor-core forward ('D=128 keys=32 stages=2 warps=4'; 'none' before any)");
  m.def("last_forward_order", [] { return std::string(attncore::fwd_tc_order()); },
        "the CTA order of the last tensor-core forward: 'rows' (row-block major) or 'heads' ('none' before any)");
  m.def("last_backward_order", [] { return std::string(attncore::bwd_tc_order()); },
        "the dK/dV CTAs' order of the last tensor-core backward: 'rows' (key-block major) or 'heads' ('none' before any)");
  m.def("last_backward_dq", [] { return std::string(attncore::bwd_tc_dq()); },
        "how the last tensor-core backward computed dQ: 'kernel' (fixed order) or 'atomic' ('none' before any)");
}
