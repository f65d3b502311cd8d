// The large-block pool behind Buffer (buffer.h): freed blocks of 1 MiB and more are kept, up to a
// cap, and handed out again for requests they fit without wasting more than a quarter of their
// size. Small blocks go straight to the C allocator.
#include <algorithm>
#include <cstdlib>
#include <map>
#include <mutex>

#include "cpu/buffer.h"

namespace rnnkit {
namespace cpu {
namespace {

constexpr std::size_t kAlign = 64;
constexpr std::size_t kMinPooled = std::size_t(1) << 20;

struct Pool {
  std::mutex mutex;
  std::multimap<std::size_t, void*> free_blocks;  // capacity -> block
  std::size_t kept = 0;  // bytes held in free_blocks
  std::size_t cap() const {
    // Keep at most a quarter of the machine's memory, and never more than 4 GiB.
    const std::size_t physical = physical_memory_bytes();
    const std::size_t quarter = physical ? physical / 4 : (std::size_t(1) << 30);
    return std::min<std::size_t>(quarter, std::size_t(4) << 30);
  }
};

Pool& pool() {
  static Pool* p = new Pool();  // never destroyed: Buffers may be released during static destruction
  return *p;
}

}  // namespace

void* pool_allocate(std::size_t bytes, std::size_t* capacity) {
  if (bytes >= kMinPooled) {
    Pool& p = pool();
    std::lock_guard<std::mutex> lock(p.mutex);
    auto it = p.free_blocks.lower_bound(bytes);
    if (it != p.free_blocks.end() && it->first <= bytes + bytes / 4) {
      void* block = it->second;
      *capacity = it->first;
      p.kept -= it->first;
      p.free_blocks.erase(it);
      return block;
    }
  }
  *capacity = bytes;
  return std::aligned_alloc(kAlign, bytes);
}

void pool_release(void* block, std::size_t capacity) {
  if (capacity >= kMinPooled) {
    Pool& p = pool();
    std::lock_guard<std::mutex> lock(p.mutex);
    if (p.kept + capacity <= p.cap()) {
      p.free_blocks.emplace(capacity, block);
      p.kept += capacity;
      return;
    }
  }
  std::free(block);
}

std::size_t pool_kept_bytes() {
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mutex);
  return p.kept;
}

void pool_empty() {
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mutex);
  for (auto& [capacity, block] : p.free_blocks) std::free(block);
  p.free_blocks.clear();
  p.kept = 0;
}

}  // namespace cpu
}  // namespace rnnkit
