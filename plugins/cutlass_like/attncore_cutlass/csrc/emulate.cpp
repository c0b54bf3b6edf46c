// The CPU emulation library (emulate.h): the portable forward, and the CUDA runtime calls the kernels'
// host code makes, answered for an emulated sm_90 with 227 KiB of shared memory per block. The other
// kernels are in emulate_bwd.cpp, emulate_fwd_tc.cpp and emulate_bwd_tc.cpp (one .cu each: each has
// its own anonymous namespace).
#define ATTNCORE_EMULATE 1
#include "emulate.h"
// clang-format off
#include "fwd_simt.cu"
// clang-format on

// No CUDA runtime is linked: kernel launches on host threads cannot fail asynchronously.
cudaError_t cudaGetLastError(void) { return cudaSuccess; }

const char* cudaGetErrorString(cudaError_t error) { return error == cudaSuccess ? "no error" : "error in the CPU emulation"; }

cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

// An emulated sm_90 with 4 multiprocessors (few, so that small test calls reach the occupancy rules of
// bwd_tc_dq_splits), each holding one CTA of any kernel.
cudaError_t cudaDeviceGetAttribute(int* value, enum cudaDeviceAttr attr, int /*device*/) {
  *value = attr == cudaDevAttrMaxSharedMemoryPerBlockOptin ? 227 * 1024 : attr == cudaDevAttrMultiProcessorCount ? 4 : 0;
  return cudaSuccess;
}

// (cuda_runtime.h's template for a kernel pointer calls this one)
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(int* num_blocks, const void* /*func*/, int /*block_size*/, size_t /*dynamic_smem*/,
                                                                   unsigned int /*flags*/) {
  *num_blocks = 1;
  return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void* /*func*/, enum cudaFuncAttribute /*attr*/, int /*value*/) { return cudaSuccess; }

// The emulation runs the tensor-core bodies (mma.cuh emulates the instructions): report sm_80+ code.
cudaError_t cudaFuncGetAttributes(struct cudaFuncAttributes* attr, const void* /*func*/) {
  *attr = cudaFuncAttributes{};
  attr->ptxVersion = 90;
  attr->binaryVersion = 90;
  return cudaSuccess;
}
