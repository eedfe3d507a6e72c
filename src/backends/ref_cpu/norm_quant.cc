// CPU references for kernels/norm_quant (see norm_quant.h and the numerics in norm_quant_params.h).
#include "backends/ref_cpu/norm_quant.h"

#include <cmath>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "formats/formats.h"
#include "formats/fp8.h"

namespace qs::ref_cpu {

static void store_row(const kernels::QuantOut& o, int64_t r, int64_t cols, const float* y) {
  const fmt4::ActQuantRow qr = fmt4::quantize_act_row(y, cols, o.q + r * cols);
  o.scale[r] = qr.scale;
  if (o.xsum) o.xsum[r] = qr.sum;
  if (o.qsum) o.qsum[r] = qr.qsum;
}

static void store_row(const kernels::Fp8QuantOut& o, int64_t r, int64_t cols, const float* y) {
  o.scale[r] = fp8::quantize_fp8_row(y, cols, o.q + r * cols);
}

static void check_dims(int32_t rows, int32_t cols, const kernels::QuantOut& o) {
  QS_CHECK(rows >= 0 && cols > 0) << "bad shape [" << rows << ", " << cols << "]";
  QS_CHECK(o.q && o.scale) << "quantized output and scale are required";
}
static void check_dims(int32_t rows, int32_t cols, const kernels::Fp8QuantOut& o) {
  QS_CHECK(rows >= 0 && cols > 0) << "bad shape [" << rows << ", " << cols << "]";
  QS_CHECK(o.q && o.scale) << "fp8 output and scale are required";
}

template <typename Out>
static void rmsnorm_impl(const kernels::RmsNormQuantParams& p, const Out& out) {
  check_dims(p.rows, p.cols, out);
  const int64_t n = p.cols;
  parallel_for(p.rows, [&](int64_t begin, int64_t end) {
    std::vector<float> h(n), y(n);
    for (int64_t r = begin; r < end; ++r) {
      double ss = 0;
      for (int64_t k = 0; k < n; ++k) {
        float v = fp16_to_float(p.x[r * n + k]);
        if (p.residual_in) {
          const uint16_t hb = float_to_fp16(v + fp16_to_float(p.residual_in[r * n + k]));
          if (p.residual_out) p.residual_out[r * n + k] = hb;
          v = fp16_to_float(hb);
        }
        h[k] = v;
        ss += double(v) * double(v);
      }
      const float inv = 1.0f / std::sqrt(float(ss) / float(n) + p.eps);
      for (int64_t k = 0; k < n; ++k) y[k] = (h[k] * inv) * fp16_to_float(p.weight[k]);
      store_row(out, r, n, y.data());
    }
  });
}

template <typename Out>
static void silu_impl(const kernels::SiluMulQuantParams& p, const Out& out) {
  check_dims(p.rows, p.cols, out);
  const int64_t n = p.cols;
  parallel_for(p.rows, [&](int64_t begin, int64_t end) {
    std::vector<float> y(n);
    for (int64_t r = begin; r < end; ++r) {
      for (int64_t k = 0; k < n; ++k) {
        const float g = fp16_to_float(p.gate_up[r * 2 * n + k]);
        const float u = fp16_to_float(p.gate_up[r * 2 * n + n + k]);
        y[k] = (g / (1.0f + std::exp(-g))) * u;
      }
      store_row(out, r, n, y.data());
    }
  });
}

template <typename Out>
static void act_impl(const kernels::ActQuantParams& p, const Out& out) {
  check_dims(p.rows, p.cols, out);
  const int64_t n = p.cols;
  parallel_for(p.rows, [&](int64_t begin, int64_t end) {
    std::vector<float> y(n);
    for (int64_t r = begin; r < end; ++r) {
      for (int64_t k = 0; k < n; ++k) y[k] = fp16_to_float(p.x[r * n + k]);
      store_row(out, r, n, y.data());
    }
  });
}

void rmsnorm_quant(const kernels::RmsNormQuantParams& p) { rmsnorm_impl(p, p.out); }
void silu_mul_quant(const kernels::SiluMulQuantParams& p) { silu_impl(p, p.out); }
void act_quant(const kernels::ActQuantParams& p) { act_impl(p, p.out); }
void rmsnorm_quant_fp8(const kernels::RmsNormQuantParams& p) { rmsnorm_impl(p, p.fp8); }
void silu_mul_quant_fp8(const kernels::SiluMulQuantParams& p) { silu_impl(p, p.fp8); }
void act_quant_fp8(const kernels::ActQuantParams& p) { act_impl(p, p.fp8); }

}  // namespace qs::ref_cpu
