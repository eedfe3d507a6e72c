// The activation-sum check of the INT8 quantization tests (CPU reference and GPU kernels). formats.h defines the
// sum on the quantized row: xsum = fp16(float(s) * sum_k q_k) with the integer sum of the INT8 codes, so an xsum is
// checked bit-exactly against the row's own codes and scale. The old check (1% of the reference's xsum) also
// passed an xsum computed from the unquantized activations (sum_k y_k, which differs by the rounding errors of
// the codes: ~0.3 s sqrt(K), a few fp16 ulps); the tests run that negative control against this check.
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace qs::test {

// fp16(float(scale) * sum of the `cols` INT8 codes of one row): formats.h quantize_act_row's sum.
inline uint16_t xsum_of_codes(const int8_t* q, int64_t cols, uint16_t scale_bits) {
  int64_t sum = 0;
  for (int64_t k = 0; k < cols; ++k) sum += q[k];
  return float_to_fp16(fp16_to_float(scale_bits) * float(sum));
}

// What an implementation that summed the unquantized activations would store: fp16(sum_k y_k) (double sum).
inline uint16_t xsum_unquantized(const float* y, int64_t cols) {
  double sum = 0;
  for (int64_t k = 0; k < cols; ++k) sum += y[k];
  return float_to_fp16(float(sum));
}

}  // namespace qs::test
