// Host entry points of the kernels (one translation unit each); bindings.cpp calls them.
#pragma once

#include <cuda_runtime.h>

#include <cstdlib>
#include <string>

#include "params.h"

// A kernel launch; under ATTNCORE_EMULATE (the CPU emulation, emulate.h) the kernel runs on host threads.
// `kernel` must be a single token (an alias of the template instance).
#ifdef ATTNCORE_EMULATE
#define ATTNCORE_LAUNCH(kernel, grid, block, smem, stream, ...) ::attncore::emu::launch(grid, dim3(block), (smem), [&] { kernel(__VA_ARGS__); })
#else
#define ATTNCORE_LAUNCH(kernel, grid, block, smem, stream, ...) kernel<<<grid, block, smem, stream>>>(__VA_ARGS__)
#define ATTNCORE_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#endif

// Tensor-core bodies: compiled for sm_80+, and in the CPU emulation (mma.cuh emulates the instructions).
#if defined(ATTNCORE_EMULATE) || (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800)
#define ATTNCORE_TC 1
#else
#define ATTNCORE_TC 0
#endif
#ifdef __CUDA_ARCH__
#define ATTNCORE_ARCH __CUDA_ARCH__
#else
#define ATTNCORE_ARCH 900  // the emulation takes the Hopper paths
#endif

namespace attncore {

enum class DType { kF32 = 0, kF16 = 1, kBF16 = 2 };

// Portable kernels (every arch from sm_60, every dtype): fp32 arithmetic on CUDA cores.
cudaError_t fwd_simt(const Params& p, DType dt, cudaStream_t stream);
cudaError_t bwd_simt(const BwdParams& p, DType dt, cudaStream_t stream);
// The backward's delta and base-2 LSE (PrepParams), one warp per row; every arch, every dtype.
cudaError_t bwd_prep(const PrepParams& pp, DType dt, cudaStream_t stream);

// Tensor-core kernels (f16/bf16; fp32 as 3xTF32; compiled for sm_80+). `*launched` is false when no variant fits
// this call (head dim, shared memory); the caller then runs the portable kernel.
cudaError_t fwd_tc(const Params& p, DType dt, cudaStream_t stream, bool* launched);
cudaError_t bwd_tc(const BwdParams& p, DType dt, cudaStream_t stream, bool* launched);
// How the last bwd_tc call that launched computed dK and dV: "one" launch of 4-warp CTAs, "split" (dV, then
// dK), or "paired" 8-warp CTAs (the fp32 D = 128/256 kernels of ATTNCORE_CUTLASS_FP32_BWD_PAIRS); "none"
// before any. For tests and diagnostics (a process-wide record, not per thread).
const char* bwd_tc_variant();
// The tile configuration of the last fwd_tc call that launched ("D=128 keys=32 stages=2 warps=4"; "none"
// before any): padded head dim, keys per tile, pipeline stages, warps per CTA. For tests and A/B runs.
const char* fwd_tc_variant();
// The CTA order of the last tensor-core forward: "rows" (row-block major) or "heads" (fwd_tc.cu's fwd_cta).
const char* fwd_tc_order();
// How it computed dQ: "kernel" (its own launch, a fixed summation order), "atomic" (the fp32 dK/dV CTAs add
// their shares to the pre-zeroed dq, unless BwdParams::deterministic) or "serial" (deterministic fp32: each
// dK/dV CTA adds the dQ of its key blocks in order to its own zeroed slice); "none" before any.
const char* bwd_tc_dq();
// The dK/dV CTAs' order of the last bwd_tc call that launched: "rows" (key-block major; the fp32 atomic-dQ kernels
// only, bwd_tc.cu's bwd_rows_first) or "heads".
const char* bwd_tc_order();
// Deterministic fp32 backward: how many dK/dV CTAs per (sequence, head) add dQ serially ("serial" above), each
// into its own zeroed slice that the caller sums afterwards in a fixed order (1: dq itself, zeroed), or 0 for
// the two-kernel order. ATTNCORE_CUTLASS_FP32_DQ_SPLITS: unset = by occupancy (bwd_tc.cu); 0 = never; N = N
// (at most one per key block). 0 where no such kernel fits this call.
int bwd_tc_dq_splits(const BwdParams& bp);

// Whether the code the driver picked for this device (SASS or JIT from PTX) has tensor-core bodies,
// i.e. was compiled for sm_80 or newer (an sm_75 build run on a newer GPU has none).
bool tc_compiled_for_device();

// Whether the comma-separated list in environment variable `name` (spaces ignored; `unset` when the variable
// is not set) holds `entry` exactly. The launchers' switches read it at every call.
inline bool env_list_has(const char* name, const char* unset, const char* entry) {
  const char* env = std::getenv(name);
  std::string list = ",";
  for (const char* c = env != nullptr ? env : unset; *c != '\0'; ++c) {
    if (*c != ' ') list += *c;
  }
  list += ',';
  return list.find(std::string(",") + entry + ",") != std::string::npos;
}

// A CTA-order switch (ATTNCORE_CUTLASS_FWD_ORDER, _BWD_ORDER), read at every call: 1 for exactly "rows", 0 for
// exactly "heads", `otherwise` when unset or anything else.
inline bool env_rows_first(const char* name, bool otherwise) {
  const char* env = std::getenv(name);
  if (env != nullptr && std::string(env) == "rows") return true;
  if (env != nullptr && std::string(env) == "heads") return false;
  return otherwise;
}

// Opt a kernel into more than 48 KiB of dynamic shared memory once per process; false if the device has less.
template <typename K>
bool allow_smem(K kernel, int bytes) {
  int dev = 0, optin = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess) return false;
  if (bytes > optin) return false;
  if (bytes > 48 * 1024) return cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel), cudaFuncAttributeMaxDynamicSharedMemorySize, bytes) == cudaSuccess;
  return true;
}

}  // namespace attncore
