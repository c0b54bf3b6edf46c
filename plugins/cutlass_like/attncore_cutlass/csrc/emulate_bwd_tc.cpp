// The CPU emulation library's bwd_tc kernels (see emulate.cpp).
#define ATTNCORE_EMULATE 1
#include "emulate.h"
// clang-format off
#include "bwd_tc.cu"
// clang-format on
