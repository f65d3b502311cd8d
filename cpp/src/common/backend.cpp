// The backend registry (backend.h): which backend computes on a device, in this build.
#include "rnnkit/backend.h"

#include "cpu/backend.h"

#if defined(RNNKIT_WITH_CUDA)
#include "cuda_backend.h"
#include "rnnkit_cuda.h"
#endif

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
  // Probed once: a process does not gain or lose its GPU.
  static const cuda::Status status = cuda::status();
  if (!status.available) throw std::invalid_argument(concat("device: CUDA is unavailable here (", status.reason, ")"));
  return cuda::cuda_backend();
#else
  throw std::invalid_argument(
      "device: expected 'cpu' (rnnkit was built without CUDA: reinstall with RNNKIT_CUDA=1), got 'cuda'");
#endif
}

}  // namespace rnnkit
