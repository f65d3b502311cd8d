// dev_blas.h's GEMM: cuBLAS under nvcc, the CPU's CBLAS (column-major, the same arguments) in the
// emulation build.
#include "dev_blas.h"

#include <cassert>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__CUDACC__)
#include "cublas_lazy.h"
#else
#include <cblas.h>
#ifdef BLAS_SYMBOL_PREFIX
#define RNNKIT_BLAS_CAT2(a, b) a##b
#define RNNKIT_BLAS_CAT(a, b) RNNKIT_BLAS_CAT2(a, b)
#define RNNKIT_BLAS(name) RNNKIT_BLAS_CAT(BLAS_SYMBOL_PREFIX, name)
#else
#define RNNKIT_BLAS(name) name
#endif
#endif

namespace rnnkit {
namespace cuda {
namespace {

int to_int(index_t v) {
  assert(v >= 0 && v <= kMaxGemmDim);
  return static_cast<int>(v);
}

#if defined(__CUDACC__)

[[noreturn]] void throw_cublas(cublasStatus_t st, const char* what, const char* file, int line) {
  const char* text = cublas().status_string ? cublas().status_string(st) : "?";
  throw std::runtime_error(std::string(file) + ":" + std::to_string(line) + ": " + what + " failed: " + text);
}
#define RNNKIT_CUBLAS_CHECK(expr)                                                      \
  do {                                                                                 \
    const cublasStatus_t rnnkit_st_ = (expr);                                          \
    if (rnnkit_st_ != CUBLAS_STATUS_SUCCESS) throw_cublas(rnnkit_st_, #expr, __FILE__, __LINE__); \
  } while (0)

// One handle per host thread (a handle must not be used by two threads at once), made at first use,
// with a workspace of its own: cuBLAS must not allocate one while a loop is captured into a CUDA
// graph (graph.h). 32 MiB is what cuBLAS asks for on Hopper (its documentation of the workspace).
constexpr std::size_t kCublasWorkspaceBytes = std::size_t(32) << 20;

struct Handle {
  cublasHandle_t h = nullptr;
  void* workspace = nullptr;
  ~Handle() {
    if (h != nullptr) cublas().destroy(h);
    raw_device_free(workspace);
  }
};

cublasHandle_t handle_for(Stream stream) {
  thread_local Handle handle;
  const CublasApi& api = cublas();
  if (handle.h == nullptr) {
    // Both or neither: a handle without its workspace would be handed to cublasSetWorkspace below.
    cublasHandle_t h = nullptr;
    RNNKIT_CUBLAS_CHECK(api.create(&h));
    try {
      handle.workspace = raw_device_alloc(kCublasWorkspaceBytes, "the cuBLAS workspace");
    } catch (...) {
      api.destroy(h);
      throw;
    }
    handle.h = h;
  }
  // cublasSetStream resets the workspace to cuBLAS' own: set ours after it, every time.
  RNNKIT_CUBLAS_CHECK(api.set_stream(handle.h, static_cast<cudaStream_t>(stream)));
  RNNKIT_CUBLAS_CHECK(api.set_workspace(handle.h, handle.workspace, kCublasWorkspaceBytes));
  return handle.h;
}

cublasOperation_t to_op(Op o) { return o == Op::kT ? CUBLAS_OP_T : CUBLAS_OP_N; }

#else

CBLAS_TRANSPOSE to_op(Op o) { return o == Op::kT ? CblasTrans : CblasNoTrans; }

#endif

// A GEMM inside a graphed loop (graph.h): its sizes are the topology, its scalars and pointers the
// parameters (both structs without padding, as their bytes are compared).
struct GemmShape {
  int op_a, op_b;
  index_t m, n, k, lda, ldb, ldc;
};
template <typename S, typename Out>
struct GemmOperands {
  Out alpha, beta;
  const S* a;
  const S* b;
  Out* c;
};
template <typename S, typename Out>
bool intercept_gemm(Stream stream, Op op_a, Op op_b, index_t m, index_t n, index_t k, Out alpha, const S* a,
                    index_t lda, const S* b, index_t ldb, Out beta, Out* c, index_t ldc) {
  const NodeKind kind = std::is_same_v<S, bf16_t> ? NodeKind::kGemmBf16
                        : sizeof(S) == 4          ? NodeKind::kGemm32
                                                  : NodeKind::kGemm64;
  return intercept_call(kind,
                        GemmShape{static_cast<int>(op_a), static_cast<int>(op_b), m, n, k, lda, ldb, ldc},
                        GemmOperands<S, Out>{alpha, beta, a, b, c},
                        [=] { gemm(stream, op_a, op_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc); });
}

#if !defined(__CUDACC__)
// A column-major bf16 matrix [rows, cols] (leading dimension ld) widened to float32, same layout.
std::vector<float> widen(const bf16_t* v, index_t rows, index_t cols, index_t ld) {
  std::vector<float> out(cols > 0 ? static_cast<std::size_t>(ld * (cols - 1) + rows) : 0, 0.0f);
  for (index_t j = 0; j < cols; ++j) {
    for (index_t i = 0; i < rows; ++i) out[static_cast<std::size_t>(i + j * ld)] = from_bf16(v[i + j * ld]);
  }
  return out;
}
#endif

}  // namespace

void prepare_blas(Stream stream) {
#if defined(__CUDACC__)
  handle_for(stream);
#else
  (void)stream;
#endif
}

void gemm(Stream stream, Op op_a, Op op_b, index_t m, index_t n, index_t k, float alpha, const float* a,
          index_t lda, const float* b, index_t ldb, float beta, float* c, index_t ldc) {
  if (intercept_gemm(stream, op_a, op_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)) return;
#if defined(__CUDACC__)
  RNNKIT_CUBLAS_CHECK(cublas().sgemm(handle_for(stream), to_op(op_a), to_op(op_b), to_int(m), to_int(n), to_int(k),
                                     &alpha, a, to_int(lda), b, to_int(ldb), &beta, c, to_int(ldc)));
#else
  (void)stream;
  RNNKIT_BLAS(cblas_sgemm)(CblasColMajor, to_op(op_a), to_op(op_b), to_int(m), to_int(n), to_int(k), alpha, a,
                           to_int(lda), b, to_int(ldb), beta, c, to_int(ldc));
#endif
}

void gemm(Stream stream, Op op_a, Op op_b, index_t m, index_t n, index_t k, double alpha, const double* a,
          index_t lda, const double* b, index_t ldb, double beta, double* c, index_t ldc) {
  if (intercept_gemm(stream, op_a, op_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)) return;
#if defined(__CUDACC__)
  RNNKIT_CUBLAS_CHECK(cublas().dgemm(handle_for(stream), to_op(op_a), to_op(op_b), to_int(m), to_int(n), to_int(k),
                                     &alpha, a, to_int(lda), b, to_int(ldb), &beta, c, to_int(ldc)));
#else
  (void)stream;
  RNNKIT_BLAS(cblas_dgemm)(CblasColMajor, to_op(op_a), to_op(op_b), to_int(m), to_int(n), to_int(k), alpha, a,
                           to_int(lda), b, to_int(ldb), beta, c, to_int(ldc));
#endif
}

void gemm(Stream stream, Op op_a, Op op_b, index_t m, index_t n, index_t k, float alpha, const bf16_t* a,
          index_t lda, const bf16_t* b, index_t ldb, float beta, float* c, index_t ldc) {
  if (intercept_gemm(stream, op_a, op_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)) return;
#if defined(__CUDACC__)
  RNNKIT_CUBLAS_CHECK(cublas().gemm_ex(handle_for(stream), to_op(op_a), to_op(op_b), to_int(m), to_int(n), to_int(k),
                                       &alpha, a, CUDA_R_16BF, to_int(lda), b, CUDA_R_16BF, to_int(ldb), &beta, c,
                                       CUDA_R_32F, to_int(ldc), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
#else
  (void)stream;
  if (m == 0 || n == 0) return;
  const std::vector<float> wa = op_a == Op::kN ? widen(a, m, k, lda) : widen(a, k, m, lda);
  const std::vector<float> wb = op_b == Op::kN ? widen(b, k, n, ldb) : widen(b, n, k, ldb);
  RNNKIT_BLAS(cblas_sgemm)(CblasColMajor, to_op(op_a), to_op(op_b), to_int(m), to_int(n), to_int(k), alpha,
                           wa.data(), to_int(lda), wb.data(), to_int(ldb), beta, c, to_int(ldc));
#endif
}

}  // namespace cuda
}  // namespace rnnkit
