// The CUDA backend behind backend.h's interface (backend.cu). No CUDA type appears here: the
// backend registry (cpp/src/common/backend.cpp) includes it in CUDA and emulation builds alike.
#pragma once

#include "rnnkit/backend.h"

namespace rnnkit {
namespace cuda {

const Backend& cuda_backend();

}  // namespace cuda
}  // namespace rnnkit
