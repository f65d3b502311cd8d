// A small team of threads for the CPU time loop, SPMD style (like an OpenMP parallel region):
// team.run(n, fn) runs fn(ctx) on n threads -- the caller is thread 0 -- and every thread calls
// ctx.barrier() at the same points. The loops split each step's GEMM by columns and the pointwise
// work by rows, with a barrier between phases, instead of asking BLAS for threads on matrices too
// small for it to split well (rnnkit's BLAS itself always runs single-threaded).
//
// The team is process-wide. If another Python thread is already using it, run() does the work on
// the calling thread alone (n = 1) rather than waiting, so independent layers in independent
// threads never block each other. Workers sleep between runs; barriers spin briefly, then yield.
// A forked child starts with no workers (they do not survive fork) and makes new ones on demand.
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include <cstdint>

#include "rnnkit/common.h"

namespace rnnkit {
namespace cpu {

// Thrown out of TeamContext::barrier() in the other threads when one thread of a run throws, so
// that none waits forever; run() rethrows the original exception.
struct TeamAborted {};

class ThreadTeam;

// Deterministic mode (TeamContext::gemm_blocks): the block, in rows or columns, in which the
// hoisted GEMMs run. Large enough that the extra calls (each packs its right-hand matrix again)
// cost little.
constexpr index_t kDeterministicRows = 256;

// What a thread of a run sees: its id, the team size, and the barrier.
class TeamContext {
 public:
  TeamContext(ThreadTeam* team, int tid, int size, bool deterministic = false)
      : team_(team), tid_(tid), size_(size), deterministic_(deterministic) {}
  int tid() const { return tid_; }
  int size() const { return size_; }
  bool deterministic() const { return deterministic_; }
  void barrier() const;

  // This thread's share [begin, end) of `total` items, in chunks that are multiples of `align`
  // (the last thread takes the remainder).
  std::pair<index_t, index_t> split(index_t total, index_t align = 1) const {
    if (size_ == 1) return {0, total};
    const index_t chunks = (total + align - 1) / align;
    const index_t per = chunks / size_, extra = chunks % size_;
    const index_t first = tid_ * per + std::min<index_t>(tid_, extra);
    const index_t count = per + (tid_ < extra ? 1 : 0);
    return {std::min(total, first * align), std::min(total, (first + count) * align)};
  }

  // Calls fn(begin, end) for this thread's share of a GEMM's `total` rows or columns: normally
  // once, on the share from split(). BLAS results depend on a call's shape (OpenBLAS changes
  // kernels and blocking with M, N and K, so a row computed in a 40-row call can round
  // differently from the same row in a 120-row call). In deterministic mode the share is cut
  // into blocks of `block` items (a multiple of `align`) whose boundaries do not depend on the
  // team size, so every element comes from the same call for every thread count.
  template <typename Fn>
  void gemm_blocks(index_t total, index_t align, index_t block, Fn&& fn) const {
    if (!deterministic_) {
      const auto [b, e] = split(total, align);
      if (e > b) fn(b, e);
      return;
    }
    block = (block + align - 1) / align * align;
    const auto [b, e] = split(total, block);
    for (index_t s = b; s < e; s += block) fn(s, std::min(e, s + block));
  }

 private:
  ThreadTeam* team_;
  int tid_;
  int size_;
  bool deterministic_;
};

class ThreadTeam {
 public:
  static ThreadTeam& instance();

  // Runs fn on up to n threads (fewer if the team is busy) and returns when all are done.
  // An exception thrown by any thread is rethrown here (the first one).
  void run(int n, const std::function<void(const TeamContext&)>& fn);

  // The team size rnnkit uses by default (set_num_threads); 1 at start.
  void set_default_size(int n);
  int default_size() const { return default_size_.load(); }

  // Deterministic mode (rnnkit.set_deterministic): results identical for every thread count;
  // read once at the start of each run, so a run never mixes the two modes.
  void set_deterministic(bool on) { deterministic_.store(on); }
  bool deterministic() const { return deterministic_.load(); }

 private:
  friend class TeamContext;
  ThreadTeam() = default;
  void ensure_workers(int n);
  void worker_main(int tid);
  void barrier_wait();
  void record_error(std::exception_ptr e);
  static void reset_after_fork();

  std::mutex run_mutex_;  // one run at a time
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  std::vector<std::thread> workers_;
  const std::function<void(const TeamContext&)>* job_ = nullptr;
  int job_size_ = 1;
  bool job_deterministic_ = false;
  std::uint64_t job_generation_ = 0;
  int pending_ = 0;
  bool stopping_ = false;
  std::exception_ptr error_;
  std::atomic<int> default_size_{1};
  std::atomic<bool> deterministic_{false};
  std::atomic<bool> aborted_{false};  // a thread of this run threw: barriers stop waiting
  // Barrier: sense reversal on a generation counter.
  std::atomic<int> arrived_{0};
  std::atomic<std::uint32_t> barrier_generation_{0};  // 32-bit: a futex word
  std::atomic<int> sleepers_{0};
};

}  // namespace cpu
}  // namespace rnnkit
