// CUDA error checking for kernels/ and backends/cuda/: QS_CUDA_RETURN(expr) returns a qs::Status on failure
// (launchers), QS_CUDA_CHECK(expr) throws qs::Error (setup code). Check after every launch too:
//   kernel<<<...>>>(...); QS_CUDA_RETURN(cudaGetLastError());
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "core/error.h"
#include "core/status.h"

#define QS_CUDA_RETURN(expr)                                                                       \
  do {                                                                                             \
    cudaError_t _qs_e = (expr);                                                                    \
    if (_qs_e != cudaSuccess)                                                                      \
      return ::qs::Status::error(std::string(#expr) + ": " + cudaGetErrorString(_qs_e) + " at " + \
                                 __FILE__ + ":" + std::to_string(__LINE__));                       \
  } while (0)

#define QS_CUDA_CHECK(expr)                                                                   \
  do {                                                                                        \
    cudaError_t _qs_e = (expr);                                                               \
    QS_CHECK(_qs_e == cudaSuccess) << #expr << ": " << cudaGetErrorString(_qs_e);             \
  } while (0)
