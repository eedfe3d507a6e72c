// GPTQ (Frantar et al.) for the W4 formats, with a pluggable rounding step, plus the Hessian accumulation from
// calibration inputs and the per-channel clipping search. Settings follow QoQ: damping 0.01 x mean(diag H),
// blocks of 128 columns with lazy batch updates of the trailing columns, no act-order.
//
// Numerics: the Hessian H = 2/n sum_t x_t x_t^T is accumulated in double; the inverse's upper Cholesky factor U
// (H^-1 = U^T U) is computed in double; the running weights are FP32 (as the reference GPTQ keeps them) and each
// row is processed by exactly one thread, so results do not depend on the thread count. Rows are independent
// given U: the "column" of GPTQ is quantized element by element through the rounding callback, which is called
// for different rows concurrently and must only touch that row's state.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "quant/weight_quant.h"

namespace qs::quant {

// H = 2/n X^T X over all rows added so far (K x K, double).
class HessianAccumulator {
 public:
  explicit HessianAccumulator(int64_t k);
  void add(const float* x, int64_t rows);  // x: [rows, K] row-major
  int64_t k() const { return k_; }
  int64_t tokens() const { return n_; }
  std::vector<double> hessian() const;  // throws if nothing was added

 private:
  int64_t k_ = 0, n_ = 0;
  std::vector<double> sum_;  // upper triangle of sum x x^T
};

// The rounding step GPTQ calls. Parameters are computed per row: once from the original row (group_size 0,
// the per-channel format) or at the first column of every group from the row's current, GPTQ-updated values.
class GptqRounding {
 public:
  virtual ~GptqRounding() = default;
  virtual int64_t group_size() const = 0;  // 0 or a divisor of the GPTQ block size
  // Sets row `row`'s parameters for columns [col0, col0 + len) from the values w[0 .. len).
  virtual void set_group(int64_t row, int64_t col0, const float* w, int64_t len) = 0;
  // Quantizes w (at row, col) with the current parameters, records the code, returns the dequantized value.
  virtual float round(int64_t row, int64_t col, float w) = 0;
};

struct GptqOptions {
  double damp = 0.01;        // relative to the mean of diag(H)
  int64_t block_size = 128;  // lazy-batch block (columns)
  // Run the inverse-Hessian factor (cuSOLVER) and the lazy batch updates (cuBLAS DGEMM) on the GPU
  // (quant/cuda/gptq_cuda.h); the column loop and the rounding stay on the host, so the algorithm is the same.
  bool cuda = false;
};

// Upper-triangular U with U^T U = (H + damp * mean(diag H) * I)^-1 (dead inputs, diag 0, get diag 1 first).
// K x K row-major. Throws if the damped H is not positive definite.
std::vector<double> gptq_inverse_hessian_factor(std::vector<double> h, int64_t k, double damp);

// One GPTQ column block [i1, i2) of every row, in parallel over the N rows (the step gptq() and gptq_cuda() share):
// rounds each column through `rounding` (set_group at every group start, or once per row from orig [N, K] when
// group_size() is 0), writes the dequantized values to q [N, K] and the scaled rounding errors of row r to
// err + r * err_stride, and updates the block's later columns of the row. Row r's column i is
// cols[r * col_stride + i - i1]; ud points at U[i1, i1] with row stride u_stride.
void gptq_column_block(GptqRounding& rounding, int64_t n, int64_t k, int64_t i1, int64_t i2, const float* orig,
                       float* cols, int64_t col_stride, const double* ud, int64_t u_stride, float* err,
                       int64_t err_stride, float* q);

// Runs GPTQ on w (F32 [N, K], not modified) with Hessian h (K x K). Returns the dequantized weights (F32 [N, K]);
// the codes and parameters are wherever `rounding` keeps them. Columns whose input is never active (diag 0)
// are set to 0 before quantization, as in the reference GPTQ.
Tensor gptq(const Tensor& w, const std::vector<double>& h, GptqRounding& rounding, const GptqOptions& opt = {});

// GPTQ with the per-channel W4 and the progressive g128 quantizers as the rounding step. The results' dequant
// is GPTQ's output, equal bit for bit to what the packed form dequantizes to.
W4PerChannelWeight gptq_w4_per_channel(const Tensor& w, const std::vector<double>& h,
                                       const std::vector<float>& clip_ratios = {}, const GptqOptions& opt = {});
W4G128Weight gptq_w4_g128(const Tensor& w, const std::vector<double>& h, int protective_range = kProtectiveRange,
                          const GptqOptions& opt = {});

// Clipping search for per-channel W4: for every output channel the ratio r in {1, 1 - 0.8/steps, ..., 0.2}
// (steps + 1 candidates, largest first; ties keep the larger ratio) minimizing the RTN output error
// ||F (w - deq_r(w))||^2, where F [rows, K] is either calibration inputs X (the output MSE on those tokens)
// or L^T for H = L L^T (the same error through the Hessian: see clip_search_factor_from_hessian).
std::vector<float> search_clip_ratios(const Tensor& w, const float* f, int64_t rows, int steps = 80,
                                      float min_ratio = 0.2f);
// L^T (K x K, F32, row-major) with L L^T = h: lets search_clip_ratios minimize d^T H d without the tokens.
std::vector<float> clip_search_factor_from_hessian(const std::vector<double>& h, int64_t k);

}  // namespace qs::quant
