// The 3xTF32 building blocks of csrc/mma.cuh on a GPU (sm_80 or newer), standalone (no torch, seconds):
//
//   benchmarks/gpu_cutlass.sh tf32, or: nvcc -std=c++17 -O3 -arch=sm_90a -I plugins/cutlass_like/attncore_cutlass/csrc \
//        plugins/cutlass_like/tools/tf32_check.cu -o /tmp/tf32_check && /tmp/tf32_check
//
// 1. Tf32::split gives the device the same bits as the host arithmetic the CPU emulation uses, for values
//    of every sign and magnitude, zeros, denormals, infinities and NaNs (NaN against NaN by class: the GPU
//    returns its canonical NaN); big keeps 13 zero low bits, x - big is exact, and a NaN or an infinite x
//    leaves a small part that the tensor cores read as NaN.
// 2. tf32_rows_rows and tf32_frag_rows (one warp, each product width the kernels use) against a float64
//    reference: the error stays within twice that of a plain fp32 dot product or 1e-6 of sum |a b| (about 8
//    fp32 ulps; one tf32 pass is at 5e-4), whichever is larger; a NaN or an infinity in an
//    operand reaches every element of the result it feeds, and no other.
// Exit status 0 when everything holds.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "mma.cuh"

using attncore::tc::Tf32;

namespace {

#define CHECK_CUDA(x)                                                               \
  do {                                                                              \
    cudaError_t e_ = (x);                                                           \
    if (e_ != cudaSuccess) {                                                        \
      std::printf("CUDA error %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, __LINE__); \
      std::exit(2);                                                                 \
    }                                                                               \
  } while (0)

__global__ void split_kernel(const float* x, uint32_t* big, uint32_t* small, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) Tf32::split(x[i], &big[i], &small[i]);
}

// C (16 x N) = A (16 x D) B (N x D)^T, one warp.
template <int D, int N>
__global__ void rows_rows_kernel(const float* A, const float* B, float* C) {
  constexpr int LD = D + 4;
  __shared__ float sa[16 * LD], sb[N * LD];
  for (int e = threadIdx.x; e < 16 * D; e += 32) sa[(e / D) * LD + e % D] = A[e];
  for (int e = threadIdx.x; e < N * D; e += 32) sb[(e / D) * LD + e % D] = B[e];
  __syncwarp();
  const int gr = threadIdx.x / 4, tq = threadIdx.x % 4;
  float c[N / 8][4] = {};
  attncore::tc::tf32_rows_rows<D, N, LD>(c, sa, sb, gr, tq);
  for (int nt = 0; nt < N / 8; ++nt) {
    for (int e = 0; e < 4; ++e) C[(gr + (e >= 2 ? 8 : 0)) * N + nt * 8 + 2 * tq + (e & 1)] = c[nt][e];
  }
}

// C (16 x D) = P (16 x N, held as C fragments) B (N x D), one warp; KG: tf32_frag_rows's chunk groups.
template <int D, int N, int KG>
__global__ void frag_rows_kernel(const float* P, const float* B, float* C) {
  constexpr int LD = D + 4;
  __shared__ float sb[N * LD];
  for (int e = threadIdx.x; e < N * D; e += 32) sb[(e / D) * LD + e % D] = B[e];
  __syncwarp();
  const int gr = threadIdx.x / 4, tq = threadIdx.x % 4;
  float pf[N / 8][4];
  for (int kc = 0; kc < N / 8; ++kc) {
    for (int e = 0; e < 4; ++e) pf[kc][e] = P[(gr + (e >= 2 ? 8 : 0)) * N + kc * 8 + 2 * tq + (e & 1)];
  }
  float c[D / 8][4] = {};
  attncore::tc::tf32_frag_rows<D, N, LD, KG>(c, pf, sb, gr, tq);
  for (int dt = 0; dt < D / 8; ++dt) {
    for (int e = 0; e < 4; ++e) C[(gr + (e >= 2 ? 8 : 0)) * D + dt * 8 + 2 * tq + (e & 1)] = c[dt][e];
  }
}

float float_of(uint32_t u) {
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}

int failures = 0;
void expect(bool ok, const char* what) {
  if (!ok) {
    ++failures;
    std::printf("FAIL: %s\n", what);
  }
}

void check_split() {
  std::mt19937 gen(7);
  std::vector<float> xs = {0.f, -0.f, 1.f, -1.f, 1.0001f, 3.14159265f, 1e-38f, 1e-45f, -1e-45f, 3e38f, -3e38f, 4e34f, 5e34f,
                           INFINITY, -INFINITY, NAN, float_of(0x7fffffffu), float_of(0xffffffffu), float_of(0x7f800001u),
                           float_of(0x3f801000u), float_of(0x3f803000u), float_of(0xbf801000u), float_of(0x7f7fffffu),
                           float_of(0xff7ff000u)};
  std::uniform_int_distribution<uint32_t> any;
  std::normal_distribution<float> nrm;
  for (int i = 0; i < (1 << 19); ++i) xs.push_back(float_of(any(gen)));                       // every bit pattern
  for (int i = 0; i < (1 << 19); ++i) xs.push_back(nrm(gen) * std::ldexp(1.f, i % 60 - 30));  // usual magnitudes
  const int n = static_cast<int>(xs.size());
  float* dx;
  uint32_t *db, *ds;
  CHECK_CUDA(cudaMalloc(&dx, n * sizeof(float)));
  CHECK_CUDA(cudaMalloc(&db, n * sizeof(uint32_t)));
  CHECK_CUDA(cudaMalloc(&ds, n * sizeof(uint32_t)));
  CHECK_CUDA(cudaMemcpy(dx, xs.data(), n * sizeof(float), cudaMemcpyHostToDevice));
  split_kernel<<<(n + 255) / 256, 256>>>(dx, db, ds, n);
  CHECK_CUDA(cudaGetLastError());
  std::vector<uint32_t> big(n), small(n);
  CHECK_CUDA(cudaMemcpy(big.data(), db, n * sizeof(uint32_t), cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(small.data(), ds, n * sizeof(uint32_t), cudaMemcpyDeviceToHost));
  int mismatches = 0, inexact = 0, wide = 0, nan_lost = 0;
  for (int i = 0; i < n; ++i) {
    uint32_t hb, hs;
    Tf32::split(xs[i], &hb, &hs);  // the host arithmetic (what the emulation runs)
    // big is integer arithmetic on the bits: identical everywhere, NaN input included; small by class when NaN
    const bool hnan = std::isnan(float_of(hs)), dnan = std::isnan(float_of(small[i]));
    mismatches += hb != big[i] || (hnan || dnan ? hnan != dnan : hs != small[i]);
    wide += (big[i] & 0x1fffu) != 0;
    if (!std::isfinite(xs[i])) {
      // NaN and inf must reach the product: small, as the tensor cores read it (19 high bits), is NaN
      nan_lost += !std::isnan(float_of(small[i] & 0xffffe000u));
      continue;
    }
    if (std::isinf(float_of(big[i]))) continue;  // x within half a tf32 ulp of FLT_MAX: small = -inf, NaN product
    const double r = static_cast<double>(xs[i]) - static_cast<double>(float_of(big[i]));
    inexact += static_cast<double>(float_of(small[i])) != r;
  }
  std::printf("split: %d values; device/host mismatches %d, big wider than tf32 %d, x - big inexact %d, NaN/inf not NaN %d\n", n,
              mismatches, wide, inexact, nan_lost);
  expect(mismatches == 0 && wide == 0 && inexact == 0 && nan_lost == 0, "Tf32::split");
  CHECK_CUDA(cudaFree(dx));
  CHECK_CUDA(cudaFree(db));
  CHECK_CUDA(cudaFree(ds));
}

// The relative error of out against the float64 product, next to a plain fp32 dot product's; poison: row
// pr / column pc (or -1) of the result must be non-finite and the rest finite.
template <int D, int N, int KG>
void check_products(const char* poison_kind) {
  std::mt19937 gen(11);
  std::normal_distribution<float> nrm;
  std::vector<float> A(16 * D), B(N * D), P(16 * N), V(N * D);
  for (auto& x : A) x = nrm(gen);
  for (auto& x : B) x = nrm(gen);
  for (auto& x : P) x = std::fabs(nrm(gen));
  for (auto& x : V) x = nrm(gen);
  int row = -1, col = -1;
  if (std::strcmp(poison_kind, "nan") == 0 || std::strcmp(poison_kind, "-nan") == 0) {
    // CUDA's NaN (big rounds to -0, small carries it), or the negative NaN whose rounding wraps big to +0
    const uint32_t nan_bits = poison_kind[0] == '-' ? 0xffffffffu : 0x7fffffffu;
    A[3 * D + 5] = float_of(nan_bits);  // row 3 of A B^T
    P[5 * N + 9] = float_of(nan_bits);  // row 5 of P V
    row = 1;
  } else if (std::strcmp(poison_kind, "inf") == 0) {
    B[2 * D + 7] = INFINITY;  // column 2 of A B^T
    V[4 * D + 0] = INFINITY;  // column 0 of P V
    col = 1;
  }
  float *dA, *dB, *dP, *dV, *dC1, *dC2;
  CHECK_CUDA(cudaMalloc(&dA, A.size() * 4));
  CHECK_CUDA(cudaMalloc(&dB, B.size() * 4));
  CHECK_CUDA(cudaMalloc(&dP, P.size() * 4));
  CHECK_CUDA(cudaMalloc(&dV, V.size() * 4));
  CHECK_CUDA(cudaMalloc(&dC1, 16 * N * 4));
  CHECK_CUDA(cudaMalloc(&dC2, 16 * D * 4));
  CHECK_CUDA(cudaMemcpy(dA, A.data(), A.size() * 4, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(dB, B.data(), B.size() * 4, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(dP, P.data(), P.size() * 4, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(dV, V.data(), V.size() * 4, cudaMemcpyHostToDevice));
  rows_rows_kernel<D, N><<<1, 32>>>(dA, dB, dC1);
  frag_rows_kernel<D, N, KG><<<1, 32>>>(dP, dV, dC2);
  CHECK_CUDA(cudaGetLastError());
  std::vector<float> C1(16 * N), C2(16 * D);
  CHECK_CUDA(cudaMemcpy(C1.data(), dC1, C1.size() * 4, cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(C2.data(), dC2, C2.size() * 4, cudaMemcpyDeviceToHost));
  double err[2] = {0, 0}, naive[2] = {0, 0};
  int wrong_class = 0;
  for (int which = 0; which < 2; ++which) {
    const int cols = which == 0 ? N : D, depth = which == 0 ? D : N;
    const int poison_row = which == 0 ? 3 : 5, poison_col = which == 0 ? 2 : 0;
    for (int i = 0; i < 16; ++i) {
      for (int j = 0; j < cols; ++j) {
        double ref = 0, mag = 0;
        float f32 = 0.f;
        for (int k = 0; k < depth; ++k) {
          const float a = which == 0 ? A[i * D + k] : P[i * N + k];
          const float b = which == 0 ? B[j * D + k] : V[k * D + j];
          ref += static_cast<double>(a) * b;
          mag += std::fabs(static_cast<double>(a) * b);
          f32 += a * b;
        }
        const float got = which == 0 ? C1[i * N + j] : C2[i * D + j];
        const bool poisoned = (row >= 0 && i == poison_row) || (col >= 0 && j == poison_col);
        if (poisoned || !std::isfinite(ref)) {
          wrong_class += std::isfinite(got);
          continue;
        }
        wrong_class += !std::isfinite(got);
        if (std::isfinite(got)) {
          err[which] = std::fmax(err[which], std::fabs(got - ref) / mag);
          naive[which] = std::fmax(naive[which], std::fabs(f32 - ref) / mag);
        }
      }
    }
  }
  std::printf("D=%d N=%d KG=%d %-4s rows_rows err %.2e (fp32 dot %.2e), frag_rows err %.2e (fp32 dot %.2e), elements of the wrong class %d\n",
              D, N, KG, poison_kind, err[0], naive[0], err[1], naive[1], wrong_class);
  expect(wrong_class == 0, "NaN/inf reach exactly the elements they feed");
  expect(err[0] <= std::fmax(2 * naive[0], 1e-6) && err[1] <= std::fmax(2 * naive[1], 1e-6), "3xTF32 products at fp32 accuracy");
  for (float* p : {dA, dB, dP, dV, dC1, dC2}) CHECK_CUDA(cudaFree(p));
}

template <int D, int N, int KG = 0>
void check_all() {
  check_products<D, N, KG>("none");
  check_products<D, N, KG>("nan");
  check_products<D, N, KG>("-nan");
  check_products<D, N, KG>("inf");
}

}  // namespace

int main() {
  check_split();
  check_all<64, 64>();     // the forward's 64-key tiles at D = 64 (small products added per step, chunk groups of 2)
  check_all<64, 64, 1>();  // the backward's 64-row steps at D = 64 (chunk groups of 1)
  check_all<128, 32>();  // the forward's key tiles at D = 128 (chained small products, groups of 4)
  check_all<256, 16>();  // D = 256 (groups of 2 chunks)
  std::printf(failures == 0 ? "tf32_check: all passed\n" : "tf32_check: %d FAILED\n", failures);
  return failures == 0 ? 0 : 1;
}
