// _core.DeviceArray, the bindings' handle on CUDA device memory (host memory in the emulation
// build): shared by bind/device.cpp (the class, the stack calls) and bind/optim.cpp (the updates).
#pragma once

#include <pybind11/pybind11.h>

#include <memory>
#include <type_traits>
#include <vector>

#include "rnnkit/common.h"

namespace rnnkit {
namespace bind {

namespace py = pybind11;

enum class Kind { kF32, kF64, kI64 };

inline const char* kind_name(Kind k) {
  switch (k) {
    case Kind::kF32: return "float32";
    case Kind::kF64: return "float64";
    case Kind::kI64: return "int64";
  }
  return "?";
}

template <typename S>
constexpr Kind kind_of() {
  if constexpr (std::is_same_v<S, float>) return Kind::kF32;
  if constexpr (std::is_same_v<S, double>) return Kind::kF64;
  return Kind::kI64;
}

inline std::size_t kind_bytes(Kind k) { return k == Kind::kF32 ? 4 : 8; }

// Device memory with a shape and dtype: owned (a shared allocation), or a view that keeps its owner
// (a Cache's block) alive through `base`.
struct DeviceArray {
  std::shared_ptr<void> memory;
  void* data = nullptr;
  std::vector<index_t> shape;
  Kind kind = Kind::kF32;
  py::object base;

  index_t numel() const {
    index_t n = 1;
    for (index_t d : shape) n = checked_mul(n, d, "array size");
    return n;
  }
  std::size_t nbytes() const { return static_cast<std::size_t>(numel()) * kind_bytes(kind); }
};

}  // namespace bind
}  // namespace rnnkit
