// The CPU emulation library's fwd_tc kernels (see emulate.cpp).
#define ATTNCORE_EMULATE 1
#include "emulate.h"
// clang-format off
#include "fwd_tc.cu"
// clang-format on
