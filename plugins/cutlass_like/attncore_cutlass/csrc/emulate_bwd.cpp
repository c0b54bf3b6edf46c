// The CPU emulation library's portable backward (see emulate.cpp).
#define ATTNCORE_EMULATE 1
#include "emulate.h"
// clang-format off
#include "bwd_simt.cu"
// clang-format on
