// C++ microbenchmarks of the CPU core (Google Benchmark): every cell's inference forward and
// training step (forward + BPTT) at the three standard shapes, in float32 and at
// precision="bfloat16", a streaming step at B=1 (float32, and bf16 from a packed snapshot), the
// bf16 GEMM kernel alone at the layers' GEMM shapes, and an sgemm in the same binary, each
// reporting GFLOP/s and the share of that sgemm rate.
//
//   cmake -S . -B build/bench -G Ninja -DRNNKIT_BUILD_BENCH=ON && cmake --build build/bench --target rnnkit_micro
//   build/bench/rnnkit_micro --benchmark_filter=lstm            # or --benchmark_min_time=0.05 for a short run
//
// FLOPs: forward = 2*T*N*G*H*(C+H), a training step = 3x forward (as the goals count them).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <vector>

#include "cpu/bf16_gemm.h"
#include "cpu/blas.h"
#include "cpu/stack.h"
#include "rnnkit/backend.h"

namespace {

using rnnkit::index_t;

double g_sgemm_gflops = 0.0;  // measured once in main, before the benchmarks

struct Shape {
  const char* name;
  index_t T, N, C, H;
};
constexpr Shape kShapes[] = {{"small", 100, 1, 128, 128}, {"mid", 100, 16, 256, 256}, {"large", 100, 64, 512, 512}};

// The CPU backend, through the interface the module uses (backend.h).
const rnnkit::BackendOps<float>& cpu_ops() { return rnnkit::backend_for(rnnkit::Device::kCpu).ops<float>(); }

// A layer's parameters and buffers, filled with small random numbers.
struct Problem {
  rnnkit::StackConfig cfg;
  index_t T, N;
  bool has_c;
  std::vector<std::vector<float>> storage;
  std::vector<rnnkit::LayerWeights<float>> weights;
  std::vector<rnnkit::LayerGrads<float>> grads;
  std::vector<float> x, y, h_n, c_n, dy, dx, dh0, dc0;

  Problem(rnnkit::CellKind cell, index_t T_, index_t N_, index_t C, index_t H, bool bf16 = false) : T(T_), N(N_) {
    cfg.cell = cell;
    cfg.precision = bf16 ? rnnkit::Precision::kBfloat16 : rnnkit::Precision::kFloat32;
    cfg.input_size = C;
    cfg.hidden_size = H;
    has_c = rnnkit::cell_info(cell).has_cell_state;
    std::mt19937 gen(0);
    std::uniform_real_distribution<float> u(-0.05f, 0.05f);
    auto fill = [&](std::size_t n) {
      storage.emplace_back(n);
      for (float& v : storage.back()) v = u(gen);
      return storage.back().data();
    };
    const auto specs = rnnkit::stack_param_specs(cfg);
    storage.reserve(2 * specs.size() + 1);
    weights.resize(cfg.groups());
    grads.resize(cfg.groups());
    for (const auto& s : specs) {
      const index_t n = s.numel();
      float* w = fill(n);
      float* g = fill(n);
      rnnkit::param_field(weights[s.group], s.role) = w;
      rnnkit::param_field(grads[s.group], s.role) = g;
    }
    x.assign(T * N * C, 0.1f);
    y.resize(T * N * H);
    dy.assign(T * N * H, 0.01f);
    dx.resize(T * N * C);
    h_n.resize(N * H);
    c_n.resize(N * H);
    dh0.resize(N * H);
    dc0.resize(N * H);
  }

  rnnkit::StackForwardArgs<float> forward_args() {
    rnnkit::StackForwardArgs<float> a;
    a.params = &weights;
    a.x = x.data();
    a.y = y.data();
    a.state_n = {h_n.data(), has_c ? c_n.data() : nullptr};
    return a;
  }

  double forward_flops() const {
    const int G = rnnkit::cell_info(cfg.cell).gates;
    return 2.0 * T * N * G * cfg.hidden_size * (cfg.input_size + cfg.hidden_size);
  }
};

void set_counters(benchmark::State& state, double flops) {
  // Rates: "gflops" is GFLOP per second; "pct_sgemm" that rate as a percentage of the sgemm's.
  state.counters["gflops"] = benchmark::Counter(flops / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["pct_sgemm"] =
      benchmark::Counter(flops / 1e9 * 100.0 / g_sgemm_gflops, benchmark::Counter::kIsIterationInvariantRate);
}

void BM_sgemm(benchmark::State& state) {
  const index_t n = state.range(0);
  std::vector<float> a(n * n, 0.5f), b(n * n, 0.25f), c(n * n);
  for (auto _ : state) {
    rnnkit::cpu::gemm(rnnkit::cpu::Trans::kNo, rnnkit::cpu::Trans::kNo, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f,
                      c.data(), n);
    benchmark::DoNotOptimize(c.data());
  }
  set_counters(state, 2.0 * n * n * n);
}

// The bf16 kernel (bf16_kernel_name(): AMX, AVX512_BF16 or the fallback) on converted and packed
// operands, C[m,n] = A[m,k] B[k,n]: the layers' input projection, step, weight-gradient shapes.
constexpr index_t kBf16Gemms[][3] = {{1600, 1024, 256}, {16, 1024, 256}, {6400, 2048, 512}, {64, 2048, 512},
                                     {1024, 256, 1600}};

void BM_bf16_gemm(benchmark::State& state) {
  namespace cpu = rnnkit::cpu;
  const index_t m = kBf16Gemms[state.range(0)][0], n = kBf16Gemms[state.range(0)][1], k = kBf16Gemms[state.range(0)][2];
  std::vector<float> a(m * k, 0.25f), b(n * k, 0.5f), c(m * n);
  std::vector<cpu::bf16_t> a16(cpu::bf16_padded_rows(m) * cpu::bf16_row_length(k)), b16(cpu::bf16_packed_size(k, n));
  cpu::convert_a_bf16(a.data(), k, false, m, k, a16.data());
  cpu::pack_b_bf16(b.data(), k, true, k, n, 0, n, b16.data());
  for (auto _ : state) {
    cpu::packed_gemm_bf16(m, k, n, 0, n, a16.data(), cpu::bf16_row_length(k), b16.data(), 0.0f, c.data(), n);
    benchmark::DoNotOptimize(c.data());
  }
  state.SetLabel(std::string(cpu::bf16_kernel_name()) + " " + std::to_string(m) + "x" + std::to_string(n) + "x" +
                 std::to_string(k));
  set_counters(state, 2.0 * m * n * k);
}

template <rnnkit::CellKind Cell, bool Bf16 = false>
void BM_forward(benchmark::State& state) {
  const Shape& s = kShapes[state.range(0)];
  Problem p(Cell, s.T, s.N, s.C, s.H, Bf16);
  const auto args = p.forward_args();
  for (auto _ : state) {
    const auto plan = cpu_ops().plan_stack(p.cfg, p.T, p.N, false);
    cpu_ops().stack_forward(*plan, args);
    benchmark::DoNotOptimize(p.y.data());
  }
  state.SetLabel(s.name);
  set_counters(state, p.forward_flops());
}

template <rnnkit::CellKind Cell, bool Bf16 = false>
void BM_train(benchmark::State& state) {
  const Shape& s = kShapes[state.range(0)];
  Problem p(Cell, s.T, s.N, s.C, s.H, Bf16);
  const auto args = p.forward_args();
  rnnkit::StackBackwardArgs<float> back;
  back.grads = &p.grads;
  back.dy = p.dy.data();
  back.dx = p.dx.data();
  back.d_state0 = {p.dh0.data(), p.has_c ? p.dc0.data() : nullptr};
  for (auto _ : state) {
    const auto plan = cpu_ops().plan_stack(p.cfg, p.T, p.N, true);
    const auto cache = cpu_ops().stack_forward(*plan, args);
    cpu_ops().stack_backward(*cache, back);
    benchmark::DoNotOptimize(p.dx.data());
  }
  state.SetLabel(std::string(s.name) + ", with dx");
  set_counters(state, 3.0 * p.forward_flops());
}

template <rnnkit::CellKind Cell>
void BM_step(benchmark::State& state) {
  Problem p(Cell, 1, 1, 256, 256);
  std::vector<float> h(256, 0.0f), c(256, 0.0f);
  auto step = p.forward_args();
  for (auto _ : state) {
    step.state0 = {h.data(), p.has_c ? c.data() : nullptr};
    step.state_n = {p.h_n.data(), p.has_c ? p.c_n.data() : nullptr};
    cpu_ops().stack_step(p.cfg, 1, step);
    std::swap(h, p.h_n);
    std::swap(c, p.c_n);
    benchmark::DoNotOptimize(h.data());
  }
  state.SetLabel("B=1, C=H=256");
  set_counters(state, p.forward_flops());
}

// A streaming step at bf16 from a snapshot packed once (stepper(): cpu::StepWeights).
template <rnnkit::CellKind Cell>
void BM_bf16_step(benchmark::State& state) {
  Problem p(Cell, 1, 1, 256, 256, true);
  const auto packed = rnnkit::cpu::pack_step_weights(p.cfg, p.weights);
  std::vector<float> h(256, 0.0f), c(256, 0.0f);
  auto step = p.forward_args();
  for (auto _ : state) {
    step.state0 = {h.data(), p.has_c ? c.data() : nullptr};
    step.state_n = {p.h_n.data(), p.has_c ? p.c_n.data() : nullptr};
    rnnkit::cpu::stack_step_packed(*packed, 1, step);
    std::swap(h, p.h_n);
    std::swap(c, p.c_n);
    benchmark::DoNotOptimize(h.data());
  }
  state.SetLabel(std::string(rnnkit::cpu::bf16_kernel_name()) + ", B=1, C=H=256");
  set_counters(state, p.forward_flops());
}

using rnnkit::CellKind;
BENCHMARK(BM_sgemm)->Arg(1024)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_bf16_gemm)->DenseRange(0, 4)->Unit(benchmark::kMicrosecond)->UseRealTime();
#define RNNKIT_CELL_BENCHMARKS(KIND, NAME)                                                               \
  BENCHMARK(BM_forward<KIND>)->Name(NAME "/forward")->DenseRange(0, 2)->Unit(benchmark::kMillisecond)->UseRealTime(); \
  BENCHMARK(BM_train<KIND>)->Name(NAME "/train")->DenseRange(0, 2)->Unit(benchmark::kMillisecond)->UseRealTime();     \
  BENCHMARK(BM_step<KIND>)->Name(NAME "/step")->Unit(benchmark::kMicrosecond)->UseRealTime();             \
  BENCHMARK(BM_bf16_step<KIND>)->Name(NAME "/bf16_step")->Unit(benchmark::kMicrosecond)->UseRealTime();   \
  BENCHMARK((BM_forward<KIND, true>))->Name(NAME "/bf16_forward")->DenseRange(0, 2)->Unit(benchmark::kMillisecond)->UseRealTime(); \
  BENCHMARK((BM_train<KIND, true>))->Name(NAME "/bf16_train")->DenseRange(0, 2)->Unit(benchmark::kMillisecond)->UseRealTime();
RNNKIT_CELL_BENCHMARKS(CellKind::kRnnTanh, "rnn_tanh")
RNNKIT_CELL_BENCHMARKS(CellKind::kLstm, "lstm")
RNNKIT_CELL_BENCHMARKS(CellKind::kGru, "gru")

double measure_sgemm(index_t n) {
  std::vector<float> a(n * n, 0.5f), b(n * n, 0.25f), c(n * n);
  double best = 1e30;
  for (int r = 0; r < 6; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    rnnkit::cpu::gemm(rnnkit::cpu::Trans::kNo, rnnkit::cpu::Trans::kNo, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f,
                      c.data(), n);
    if (r > 0) best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return 2.0 * n * n * n / best / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
  rnnkit::cpu::set_blas_threads(1);
  g_sgemm_gflops = measure_sgemm(1024);
  std::printf("sgemm 1024^3, 1 thread: %.1f GFLOP/s (the 100%% of pct_sgemm)\n", g_sgemm_gflops);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
