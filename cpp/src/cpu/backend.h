// The CPU backend: the implementation of backend.h's interface over the CPU loops.
#pragma once

#include "rnnkit/backend.h"

namespace rnnkit {
namespace cpu {

const Backend& cpu_backend();

}  // namespace cpu
}  // namespace rnnkit
