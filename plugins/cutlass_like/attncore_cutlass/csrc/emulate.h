// The portable kernels on a CPU: CUDA's execution model emulated with host threads, so the kernels'
// logic is tested where there is no GPU (as TRITON_INTERPRET does for the Triton backend). One OS thread
// per CUDA thread, one block at a time: __shared__ variables become function statics (shared by the
// block's threads), __syncthreads a block barrier, __shfl_xor_sync an exchange through a warp barrier.
// Only for the portable kernels (no inline PTX); compiled with -DATTNCORE_EMULATE by a host compiler.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <vector_functions.h>
#include <vector_types.h>

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#undef __global__
#undef __device__
#undef __shared__
#undef __launch_bounds__
#define __global__
#define __device__
#define __shared__ static
#define __launch_bounds__(...)

using std::max;
using std::min;

namespace attncore::emu {

struct Thread {
  dim3 idx;
  dim3 block;
  std::barrier<>* block_barrier = nullptr;
  std::barrier<>* warp_barrier = nullptr;
  float* exchange = nullptr;          // one slot per lane of this thread's warp
  unsigned char* scratch = nullptr;   // 64 bytes per lane of this thread's warp (warp-collective emulation)
  unsigned char* dyn_smem = nullptr;  // the block's dynamic shared memory
};

inline thread_local Thread self;
inline dim3 grid_dim;
inline dim3 block_dim;

// Run `body` once per CUDA thread of every block of `grid` (1-D blocks), block after block.
template <typename F>
void launch(dim3 grid, dim3 block, size_t smem_bytes, F&& body) {
  grid_dim = grid;
  block_dim = block;
  const int n = static_cast<int>(block.x);
  const int warps = (n + 31) / 32;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        std::barrier<> whole(n);
        std::vector<std::unique_ptr<std::barrier<>>> warp_bars;
        for (int w = 0; w < warps; ++w) warp_bars.push_back(std::make_unique<std::barrier<>>(std::min(32, n - 32 * w)));
        std::vector<float> exchange(static_cast<size_t>(warps) * 32);
        std::vector<uint64_t> scratch(static_cast<size_t>(warps) * 32 * 8);         // 64 bytes per lane, 8-byte aligned
        std::vector<uint64_t> dyn((smem_bytes + 15) / 8 + 2);                       // the block's dynamic shared memory
        unsigned char* dyn_base = reinterpret_cast<unsigned char*>(dyn.data());
        dyn_base += (16 - reinterpret_cast<uintptr_t>(dyn_base) % 16) % 16;          // 16-byte aligned
        std::vector<std::thread> threads;
        threads.reserve(n);
        for (int t = 0; t < n; ++t) {
          threads.emplace_back([&, t] {
            self = Thread{dim3(t), dim3(x, y, z), &whole, warp_bars[t / 32].get(), exchange.data() + (t / 32) * 32,
                          reinterpret_cast<unsigned char*>(scratch.data()) + (t / 32) * 32 * 64, dyn_base};
            body();
          });
        }
        for (auto& th : threads) th.join();
      }
}

inline void warp_sync() { self.warp_barrier->arrive_and_wait(); }

// Every lane publishes `bytes` (<= 64) bytes; after the call each lane can read any lane's slot with lane_slot().
inline void publish(const void* data, size_t bytes) {
  std::memcpy(self.scratch + (self.idx.x % 32) * 64, data, bytes);
  warp_sync();
}
inline const unsigned char* lane_slot(int lane) { return self.scratch + lane * 64; }

}  // namespace attncore::emu

#define ATTNCORE_DYNAMIC_SMEM(name) unsigned char* name = ::attncore::emu::self.dyn_smem

#define threadIdx (::attncore::emu::self.idx)
#define blockIdx (::attncore::emu::self.block)
#define gridDim (::attncore::emu::grid_dim)
#define blockDim (::attncore::emu::block_dim)

inline void __syncthreads() { ::attncore::emu::self.block_barrier->arrive_and_wait(); }

inline float __shfl_xor_sync(unsigned /*mask*/, float v, int lane_mask) {
  auto& s = ::attncore::emu::self;
  const unsigned lane = s.idx.x % 32;
  s.exchange[lane] = v;
  s.warp_barrier->arrive_and_wait();
  const float out = s.exchange[lane ^ static_cast<unsigned>(lane_mask)];
  s.warp_barrier->arrive_and_wait();
  return out;
}
