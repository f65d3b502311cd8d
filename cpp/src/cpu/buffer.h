// An owning, 64-byte aligned, uninitialised array: the one way the CPU core allocates memory.
//
// Each call allocates its scratch once (see workspace sizes in layer.h) and carves named views out
// of it, so nothing is allocated inside a time loop. Sizes arrive already overflow-checked
// (checked_mul); a failed allocation raises OutOfMemory with the byte count and purpose, which the
// Python module reports as MemoryError before any memory is touched.
//
// Blocks of 1 MiB and more come from a process-wide pool (block_pool.cpp) that keeps freed blocks
// for the next call: the operating system hands out fresh large allocations as untouched pages,
// and faulting in and zeroing tens of megabytes on every call cost ~8% of a large training step.
// rnnkit.empty_cache() returns the kept blocks to the system.
#pragma once

#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <utility>

#include "rnnkit/common.h"

namespace rnnkit {
namespace cpu {

// Total physical memory of this machine in bytes (0 if unknown).
inline std::size_t physical_memory_bytes() {
  const long pages = sysconf(_SC_PHYS_PAGES);
  const long page_size = sysconf(_SC_PAGE_SIZE);
  if (pages <= 0 || page_size <= 0) return 0;
  return static_cast<std::size_t>(pages) * static_cast<std::size_t>(page_size);
}

// Refuses, before anything is allocated, a call whose buffers together exceed physical memory.
// With Linux overcommit such a request may "succeed" and the process is killed later when the
// pages are touched; this turns it into a MemoryError that says what was asked for.
inline void check_fits_in_memory(index_t bytes, const char* what_for) {
  const std::size_t total = physical_memory_bytes();
  if (total != 0 && static_cast<std::size_t>(bytes) > total) {
    throw OutOfMemory(static_cast<std::size_t>(bytes),
                      concat(what_for, " (more than the machine's ", total, " bytes of memory)"));
  }
}

// Large-block pool (see the file comment). Thread-safe.
void* pool_allocate(std::size_t bytes, std::size_t* capacity);  // null when the system refuses
void pool_release(void* p, std::size_t capacity);
std::size_t pool_kept_bytes();
void pool_empty();

template <typename T>
class Buffer {
 public:
  static constexpr std::size_t kAlignment = 64;

  Buffer() = default;
  Buffer(index_t count, const char* what_for) { allocate(count, what_for); }
  ~Buffer() { release(); }

  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  Buffer(Buffer&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)),
        capacity_(std::exchange(other.capacity_, 0)) {}
  Buffer& operator=(Buffer&& other) noexcept {
    if (this != &other) {
      release();
      data_ = std::exchange(other.data_, nullptr);
      size_ = std::exchange(other.size_, 0);
      capacity_ = std::exchange(other.capacity_, 0);
    }
    return *this;
  }

  void allocate(index_t count, const char* what_for) {
    assert(count >= 0);
    release();
    if (count == 0) return;
    const index_t bytes = checked_mul(count, static_cast<index_t>(sizeof(T)), what_for);
    // aligned_alloc wants a multiple of the alignment.
    const index_t rounded =
        checked_add(bytes, static_cast<index_t>(kAlignment - 1), what_for) /
        static_cast<index_t>(kAlignment) * static_cast<index_t>(kAlignment);
    std::size_t capacity = 0;
    void* p = pool_allocate(static_cast<std::size_t>(rounded), &capacity);
    if (p == nullptr) throw OutOfMemory(static_cast<std::size_t>(bytes), what_for);
    data_ = static_cast<T*>(p);
    size_ = count;
    capacity_ = capacity;
  }

  void zero() {
    if (size_ > 0) std::memset(data_, 0, static_cast<std::size_t>(size_) * sizeof(T));
  }

  T* data() { return data_; }
  const T* data() const { return data_; }
  index_t size() const { return size_; }

 private:
  void release() {
    if (data_ != nullptr) pool_release(data_, capacity_);
    data_ = nullptr;
    size_ = 0;
    capacity_ = 0;
  }

  T* data_ = nullptr;
  index_t size_ = 0;
  std::size_t capacity_ = 0;  // bytes of the block actually held
};

}  // namespace cpu
}  // namespace rnnkit
