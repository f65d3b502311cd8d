// What every backend's stack shares about a training cache: its one layout (the views of one block)
// and the call's footprint. A reserve (Cache.reserve()) is this block, so the layout must not differ
// between backends; both carve it here.
//
// Plan: a backend's StackPlan with `shape` (layer 0's LayerShape) and `layer_kept`; Cache: one with
// data(), inputs, weights and kept (cpu/stack.h, cuda/stack.h).
#pragma once

#include <cassert>
#include <type_traits>
#include <vector>

#include "rnnkit/stack.h"

namespace rnnkit {

// Carves a cache block into its named views: the copy of layer 0's input, the inputs of layers 1..
// (the outputs of the layers below), the copies of the parameters (in spec order), then each
// group's kept layer buffers. Returns the layer inputs, writable.
template <typename Plan, typename Cache>
auto carve_stack_cache(const Plan& plan, Cache& cache) {
  using S = std::remove_pointer_t<decltype(cache.data())>;
  const StackConfig& cfg = plan.cfg;
  const index_t L = cfg.num_layers, between = plan.shape.TN * cfg.num_directions * cfg.state_size();
  S* c = cache.data();
  std::vector<S*> inputs(L);
  inputs[0] = c;
  c += plan.shape.TN * cfg.input_size;
  for (index_t l = 1; l < L; ++l) {
    inputs[l] = c;
    c += between;
  }
  cache.weights.assign(cfg.groups(), LayerWeights<S>{});
  for (const ParamSpec& spec : plan.specs) {
    param_field(cache.weights[spec.group], spec.role) = c;
    c += spec.numel();
  }
  cache.kept.resize(cfg.groups());
  for (index_t g = 0; g < cfg.groups(); ++g) {
    cache.kept[g] = c;
    c += plan.layer_kept;
  }
  assert(c == cache.data() + plan.footprint.cache);
  cache.inputs.assign(inputs.begin(), inputs.end());
  return inputs;
}

// A stack call's footprint from its layer buffers' sizes (layer_* as layer_buffer_elems gives them)
// plus what the backend adds to each pass's scratch (the CPU's packed weights, say). Training
// keeps the cache block above; inference reuses one set of layer buffers for every group and
// ping-pongs the layers' outputs.
inline StackFootprint stack_footprint(const StackConfig& cfg, const LayerShape& shape,
                                      const std::vector<ParamSpec>& specs, bool training, index_t layer_kept,
                                      index_t forward_scratch, index_t backward_scratch) {
  const index_t L = cfg.num_layers;
  const index_t between = checked_mul(shape.TN, cfg.num_directions * cfg.state_size(), "layer output");
  StackFootprint f;
  if (training) {
    f.cache = checked_add(checked_mul(shape.TN, cfg.input_size, "input"), checked_mul(L - 1, between, "layer inputs"),
                          "cache");
    f.cache = checked_add(f.cache, total_numel(specs), "cache");
    f.cache = checked_add(f.cache, checked_mul(cfg.groups(), layer_kept, "layer states"), "cache");
    f.forward_scratch = forward_scratch;
    f.backward_scratch = checked_add(backward_scratch, L > 1 ? checked_mul(2, between, "layer gradients") : 0,
                                     "backward scratch");
  } else {
    f.forward_scratch = checked_add(forward_scratch, layer_kept, "forward scratch");
    if (L > 1) f.forward_scratch = checked_add(f.forward_scratch, checked_mul(2, between, "layer outputs"), "forward scratch");
  }
  return f;
}

}  // namespace rnnkit
