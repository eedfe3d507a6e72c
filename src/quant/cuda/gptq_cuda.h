// GPTQ with its two expensive parts on the GPU (gptq.h's algorithm unchanged): the inverse-Hessian factor U
// (U^T U = (H + damp)^-1) by cuSOLVER in double (Cholesky, inverse, Cholesky of the inverse), and the lazy batch
// update of the trailing columns W[:, i2:] -= Err x U[i1:i2, i2:] by a cuBLAS DGEMM (double accumulation, as the
// CPU code). The column loop of each 128-column block and the rounding callbacks run on the host (the block's
// columns are copied back from the GPU, the block's errors sent to it), so every quantizer works unchanged.
// Results equal the CPU's up to the summation order of double dot products (a few codes may differ by one step).
// cuSOLVER is loaded at run time (dlopen libcusolver.so.12), so binaries without a GPU never need it.
// Built without CUDA: throws qs::Error.
#pragma once

#include <vector>

#include "core/tensor.h"
#include "quant/gptq.h"

namespace qs::quant {

Tensor gptq_cuda(const Tensor& w, const std::vector<double>& h, GptqRounding& rounding, const GptqOptions& opt);

}  // namespace qs::quant
