// The CUDA backend's caching allocator: device_alloc/device_free (device.h) over
// raw_device_alloc/raw_device_free (runtime.cu). cudaMalloc is slow and cudaFree synchronises the
// whole device, so a layer call that allocated its scratch from the device every time would wait
// on both; here a freed block goes to a free list of its size class and the next request of that
// class takes it back. Requests are rounded up to a class: powers of two from 512 bytes to 1 MiB,
// then whole 2 MiB units, so a loop over the same shapes finds its blocks again and the waste is
// bounded (at most 2x below 1 MiB, under 2 MiB above).
//
// Ordering: every backend call synchronises its stream before it returns, so a block freed after
// it has no work pending, whichever stream the next user queues on. A failed device allocation releases every cached
// block and tries once more before reporting out-of-memory. In the emulation build under
// AddressSanitizer a cached block is poisoned, so a use after free is still reported.
#include <cstdint>
#include <functional>
#include <mutex>
#include <set>
#include <unordered_map>

#include "device.h"
#include "rnnkit_cuda.h"

#if !defined(__CUDACC__) && defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define RNNKIT_POOL_POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define RNNKIT_POOL_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define RNNKIT_POOL_POISON(p, n) ((void)(p), (void)(n))
#define RNNKIT_POOL_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

namespace rnnkit {
namespace cuda {
namespace {

constexpr std::size_t kSmallest = 512;
constexpr std::size_t kLargeUnit = 2u << 20;

std::size_t size_class(std::size_t bytes) {
  if (bytes > (1u << 20)) return (bytes + kLargeUnit - 1) / kLargeUnit * kLargeUnit;
  std::size_t c = kSmallest;
  while (c < bytes) c *= 2;
  return c;
}

struct Pool {
  std::mutex mu;
  // class -> its cached blocks, lowest address first, the one handed out. So which block a request
  // gets depends only on which blocks are free, not on the order they were freed in: a loop that
  // frees what it allocated gets the same blocks in every pass, and its CUDA graphs are relaunched
  // rather than updated (graph.h). (Most-recently-freed-first cycles through the blocks of a class
  // over several passes when a pass frees them in another order than it took them.)
  std::unordered_map<std::size_t, std::set<void*, std::less<void*>>> free_blocks;
  std::unordered_map<void*, std::size_t> in_use;    // handed-out block -> its class
  PoolStats stats;
};

// Never destroyed: blocks may be freed by objects that outlive static destruction (Python's).
Pool& pool() {
  static Pool* p = new Pool;
  return *p;
}

void release_cached(Pool& p) {  // with p.mu held
  for (auto& [bytes, blocks] : p.free_blocks) {
    for (void* block : blocks) {
      RNNKIT_POOL_UNPOISON(block, bytes);
      raw_device_free(block);
    }
  }
  p.free_blocks.clear();
  p.stats.cached_bytes = 0;
}

}  // namespace

void* device_alloc(std::size_t bytes, const char* what_for) {
  refuse_in_graph("allocating device memory");
  Pool& p = pool();
  const std::size_t cls = size_class(bytes);
  std::lock_guard<std::mutex> lock(p.mu);
  auto it = p.free_blocks.find(cls);
  void* block = nullptr;
  if (it != p.free_blocks.end() && !it->second.empty()) {
    block = *it->second.begin();
    it->second.erase(it->second.begin());
    p.stats.cached_bytes -= cls;
    ++p.stats.reuses;
    RNNKIT_POOL_UNPOISON(block, cls);
  } else {
    try {
      block = raw_device_alloc(cls, what_for);
    } catch (const OutOfMemory&) {
      release_cached(p);
      block = raw_device_alloc(cls, what_for);  // throws OutOfMemory again if it still does not fit
    }
    ++p.stats.device_allocations;
  }
  p.in_use.emplace(block, cls);
  p.stats.in_use_bytes += cls;
  return block;
}

void device_free(void* block) noexcept {
  if (block == nullptr) return;
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mu);
  auto it = p.in_use.find(block);
  assert(it != p.in_use.end() && "device_free of a block the pool did not hand out");
  if (it == p.in_use.end()) return;
  const std::size_t cls = it->second;
  p.in_use.erase(it);
  p.stats.in_use_bytes -= cls;
  RNNKIT_POOL_POISON(block, cls);
  p.free_blocks[cls].insert(block);
  p.stats.cached_bytes += cls;
}

PoolStats pool_stats() {
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mu);
  return p.stats;
}

void empty_cache() {
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mu);
  release_cached(p);
}

}  // namespace cuda
}  // namespace rnnkit
