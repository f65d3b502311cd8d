// Facts about how the core was compiled, reported by rnnkit.build_info(). Compiled with the core's
// -march, so Eigen reports the vector instructions the cell math actually uses.
#include <Eigen/Core>

#include <string>

#include "cpu/build_info.h"
#include "rnnkit/common.h"

namespace rnnkit {
namespace cpu {

std::string simd_info() { return Eigen::SimdInstructionSetsInUse(); }

std::string eigen_version() {
  return concat(EIGEN_WORLD_VERSION, ".", EIGEN_MAJOR_VERSION, ".", EIGEN_MINOR_VERSION);
}

}  // namespace cpu
}  // namespace rnnkit
