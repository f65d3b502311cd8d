// The compiled module rnnkit._core, assembled from one registration function per subject
// (bind/module.cpp calls them in order). Each file registers its own classes and functions.
#pragma once

#include <pybind11/pybind11.h>

// The build's identity, from CMake (the defaults serve a build outside it).
#ifndef RNNKIT_VERSION
#define RNNKIT_VERSION "0+unknown"
#endif
#ifndef RNNKIT_ARCH
#define RNNKIT_ARCH "none"
#endif

namespace rnnkit {
namespace bind {

void register_stack(pybind11::module_& m);       // bind/stack.cpp: StackConfig, Cache, forward, backward, step
void register_network(pybind11::module_& m);     // bind/network.cpp: NetworkConfig, NetworkCache, network_*
void register_optim(pybind11::module_& m);       // bind/optim.cpp: *_step, sum_of_squares, scale/clamp_arrays
void register_runtime(pybind11::module_& m);     // bind/runtime.cpp: threads, determinism, buffers, build info
void register_test_hooks(pybind11::module_& m);  // bind/test_hooks.cpp: _-prefixed hooks for tests and benchmarks

#ifdef RNNKIT_WITH_CUDA
struct Cache;
// bind/device.cpp: DeviceArray, to_device, and the stack calls on CUDA arrays (registered after the
// NumPy ones, so that NumPy calls match their overload first).
void register_device(pybind11::module_& m);
// backward and Cache.reserve() for a cache the CUDA backend made (bind/stack.cpp routes them here).
pybind11::tuple device_backward(Cache& cache, const pybind11::object& dy, const pybind11::object& dh_n,
                                const pybind11::object& dc_n, const pybind11::list& grads, bool need_dx);
pybind11::object device_reserve_view(const pybind11::object& cache);
#endif

}  // namespace bind
}  // namespace rnnkit
