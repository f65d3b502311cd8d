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

}  // namespace bind
}  // namespace rnnkit
