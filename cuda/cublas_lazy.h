// The cuBLAS entry points rnnkit uses, looked up at first use (cublas_lazy.cpp): the types come from
// cublas_v2.h, the code from libcublas.so.13 loaded with dlopen. Private to the CUDA backend.
#pragma once

#include <cublas_v2.h>

#include <string>

namespace rnnkit {
namespace cuda {

// cublasGemmEx's C entry point (cublas_api.h also declares a C++ overload taking a cudaDataType
// compute type, so decltype cannot name it).
using GemmExFn = cublasStatus_t (*)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void*,
                                    const void*, cudaDataType, int, const void*, cudaDataType, int, const void*, void*,
                                    cudaDataType, int, cublasComputeType_t, cublasGemmAlgo_t);

struct CublasApi {
  decltype(&cublasCreate_v2) create = nullptr;
  decltype(&cublasDestroy_v2) destroy = nullptr;
  decltype(&cublasSgemm_v2) sgemm = nullptr;
  decltype(&cublasDgemm_v2) dgemm = nullptr;
  GemmExFn gemm_ex = nullptr;  // precision="bfloat16"
  decltype(&cublasSetStream_v2) set_stream = nullptr;
  decltype(&cublasSetWorkspace_v2) set_workspace = nullptr;
  decltype(&cublasGetStatusString) status_string = nullptr;
  std::string error;
};

// The loaded API; throws std::runtime_error saying why when cuBLAS cannot be loaded.
const CublasApi& cublas();

}  // namespace cuda
}  // namespace rnnkit
