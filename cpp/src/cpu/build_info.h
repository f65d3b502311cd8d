// Facts about how the CPU core was compiled (reported by rnnkit.build_info()).
#pragma once

#include <string>

namespace rnnkit {
namespace cpu {

std::string simd_info();      // the vector instruction sets Eigen uses in the core
std::string eigen_version();

}  // namespace cpu
}  // namespace rnnkit
