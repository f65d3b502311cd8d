// The backend registry (backend.h): which backend computes on a device, in this build.
#include "rnnkit/backend.h"

#include "cpu/backend.h"

namespace rnnkit {

const char* device_name(Device device) {
  switch (device) {
    case Device::kCpu: return "cpu";
    case Device::kCuda: return "cuda";
  }
  return "?";
}

const Backend& backend_for(Device device) {
  if (device == Device::kCpu) return cpu::cpu_backend();
#if defined(RNNKIT_WITH_CUDA)
  throw std::invalid_argument(
      "device: expected 'cpu' (rnnkit's CUDA backend is built but does not run recurrent layers yet), got 'cuda'");
#else
  throw std::invalid_argument(
      "device: expected 'cpu' (rnnkit was built without CUDA: reinstall with RNNKIT_CUDA=1), got 'cuda'");
#endif
}

}  // namespace rnnkit
