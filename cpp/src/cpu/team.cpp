// The process-wide thread team (team.h).
#include "cpu/team.h"

#include <pthread.h>

#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <climits>
#endif

#include <chrono>
#include <new>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define RNNKIT_PAUSE() _mm_pause()
#else
#define RNNKIT_PAUSE() ((void)0)
#endif

namespace rnnkit {
namespace cpu {

ThreadTeam& ThreadTeam::instance() {
  static ThreadTeam* team = [] {
    auto* t = new ThreadTeam();  // never destroyed: workers may outlive static destruction order
    pthread_atfork(nullptr, nullptr, &ThreadTeam::reset_after_fork);
    return t;
  }();
  return *team;
}

void ThreadTeam::reset_after_fork() {
  // In the child only this thread exists: forget the parent's workers without touching them, and
  // give the child fresh locks (any of them may have been held by a thread that is gone).
  ThreadTeam& t = instance();
  (void)new std::vector<std::thread>(std::move(t.workers_));  // leaked on purpose: never joined
  t.workers_.clear();
  new (&t.run_mutex_) std::mutex();
  new (&t.mutex_) std::mutex();
  new (&t.wake_) std::condition_variable();
  new (&t.done_) std::condition_variable();
  t.job_ = nullptr;
  t.pending_ = 0;
  t.stopping_ = false;
  t.aborted_.store(false);
  t.arrived_.store(0);
}

void ThreadTeam::record_error(std::exception_ptr e) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!error_) error_ = e;
  aborted_.store(true);
}

void ThreadTeam::set_default_size(int n) {
  if (n < 1) throw_expected("num_threads", "an integer >= 1", n);
  default_size_.store(n);
}

void ThreadTeam::ensure_workers(int n) {
  // Called with run_mutex_ held: only one run() grows the team at a time.
  while (static_cast<int>(workers_.size()) < n - 1) {
    const int tid = static_cast<int>(workers_.size()) + 1;
    workers_.emplace_back([this, tid] { worker_main(tid); });
  }
}

void ThreadTeam::worker_main(int tid) {
  std::uint64_t seen = 0;
  for (;;) {
    const std::function<void(const TeamContext&)>* job;
    int size;
    bool det;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return stopping_ || job_generation_ != seen; });
      if (stopping_) return;
      seen = job_generation_;
      job = job_;
      size = job_size_;
      det = job_deterministic_;
    }
    if (tid < size) {
      try {
        (*job)(TeamContext(this, tid, size, det));
      } catch (const TeamAborted&) {
        // another thread failed; its exception is the one reported
      } catch (...) {
        record_error(std::current_exception());
      }
      std::lock_guard<std::mutex> lock(mutex_);
      if (--pending_ == 0) done_.notify_one();
    }
  }
}

void ThreadTeam::run(int n, const std::function<void(const TeamContext&)>& fn) {
  const bool det = deterministic_.load();
  std::unique_lock<std::mutex> run_lock(run_mutex_, std::try_to_lock);
  if (n <= 1 || !run_lock.owns_lock()) {
    fn(TeamContext(this, 0, 1, det));
    return;
  }
  ensure_workers(n);
  arrived_.store(0);
  aborted_.store(false);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    job_ = &fn;
    job_size_ = n;
    job_deterministic_ = det;
    pending_ = n - 1;
    error_ = nullptr;
    ++job_generation_;
  }
  wake_.notify_all();
  try {
    fn(TeamContext(this, 0, n, det));
  } catch (const TeamAborted&) {
  } catch (...) {
    record_error(std::current_exception());
  }
  std::unique_lock<std::mutex> lock(mutex_);
  done_.wait(lock, [&] { return pending_ == 0; });
  job_ = nullptr;
  if (error_) std::rethrow_exception(error_);
}

namespace {

// Sleeps while *word == expected (Linux futex; elsewhere a short sleep), woken by futex_wake.
void futex_wait(std::atomic<std::uint32_t>* word, std::uint32_t expected) {
#if defined(__linux__)
  struct timespec timeout = {0, 1000000};  // 1 ms: also bounds the wait if a wake is missed
  syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), FUTEX_WAIT_PRIVATE, expected, &timeout,
          nullptr, 0);
#else
  (void)word;
  (void)expected;
  std::this_thread::sleep_for(std::chrono::microseconds(50));
#endif
}

void futex_wake_all(std::atomic<std::uint32_t>* word) {
#if defined(__linux__)
  syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr,
          nullptr, 0);
#else
  (void)word;
#endif
}

}  // namespace

void ThreadTeam::barrier_wait() {
  const int size = job_size_;
  const std::uint32_t gen = barrier_generation_.load(std::memory_order_acquire);
  if (arrived_.fetch_add(1, std::memory_order_acq_rel) + 1 == size) {
    arrived_.store(0, std::memory_order_relaxed);
    barrier_generation_.fetch_add(1, std::memory_order_acq_rel);
    if (sleepers_.load(std::memory_order_acquire) > 0) futex_wake_all(&barrier_generation_);
    return;
  }
  // Spin a few microseconds (the partner is normally a step's work away), then sleep: with more
  // threads than free cores, spinning would take the CPU from the thread everyone waits for.
  for (int spins = 0; barrier_generation_.load(std::memory_order_acquire) == gen; ++spins) {
    if (aborted_.load(std::memory_order_relaxed)) throw TeamAborted{};
    if (spins < 1000) {
      RNNKIT_PAUSE();
    } else {
      sleepers_.fetch_add(1, std::memory_order_acq_rel);
      if (barrier_generation_.load(std::memory_order_acquire) == gen) futex_wait(&barrier_generation_, gen);
      sleepers_.fetch_sub(1, std::memory_order_acq_rel);
    }
  }
}

void TeamContext::barrier() const {
  if (size_ > 1) team_->barrier_wait();
}

}  // namespace cpu
}  // namespace rnnkit
