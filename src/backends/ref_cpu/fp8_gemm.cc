// CPU reference of the FP8 linear layer (see fp8_gemm.h).
#include "backends/ref_cpu/fp8_gemm.h"

#include "core/dtype.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "formats/fp8.h"

namespace qs::ref_cpu {

Fp8Weights quantize_fp8_weights(const float* w, int n, int k) {
  QS_CHECK(n > 0 && k > 0) << "quantize_fp8_weights: bad shape [" << n << ", " << k << "]";
  Fp8Weights out;
  out.n = n, out.k = k;
  out.q.resize(size_t(n) * size_t(k));
  out.scale.resize(size_t(n));
  parallel_for(n, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r)
      out.scale[size_t(r)] = fp8::quantize_fp8_row(w + r * k, k, out.q.data() + r * k);
  });
  return out;
}

Fp8Weights quantize_fp8_weights_f16(const uint16_t* w, int n, int k) {
  QS_CHECK(n > 0 && k > 0) << "quantize_fp8_weights: bad shape [" << n << ", " << k << "]";
  std::vector<float> f(size_t(n) * size_t(k));
  for (size_t i = 0; i < f.size(); ++i) f[i] = fp16_to_float(w[i]);
  return quantize_fp8_weights(f.data(), n, k);
}

void fp8_gemm(const uint8_t* x, const float* sx, int m, const Fp8Weights& w, const uint16_t* residual, float* y) {
  QS_CHECK(m >= 0) << "fp8_gemm: m must be >= 0";
  QS_CHECK(w.q.size() == size_t(w.n) * size_t(w.k) && w.scale.size() == size_t(w.n)) << "fp8_gemm: bad weights";
  const int n = w.n, k = w.k;
  std::vector<double> wf(w.q.size());
  for (size_t i = 0; i < wf.size(); ++i) wf[i] = fp8::e4m3_to_float(w.q[i]);
  parallel_for(m, [&](int64_t b, int64_t e) {
    std::vector<double> xf(static_cast<size_t>(k));
    for (int64_t r = b; r < e; ++r) {
      for (int j = 0; j < k; ++j) xf[size_t(j)] = fp8::e4m3_to_float(x[r * k + j]);
      for (int c = 0; c < n; ++c) {
        const double* wr = wf.data() + size_t(c) * size_t(k);
        double acc = 0.0;
        for (int j = 0; j < k; ++j) acc += xf[size_t(j)] * wr[j];
        double v = acc * double(sx[r]) * double(w.scale[size_t(c)]);
        if (residual) v += double(fp16_to_float(residual[r * n + c]));
        y[r * n + c] = float(v);
      }
    }
  });
}

}  // namespace qs::ref_cpu
