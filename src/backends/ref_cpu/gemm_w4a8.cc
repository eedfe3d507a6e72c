// Exact reference GEMMs for W4A8 (per-channel, g128) and W8A8: see gemm_w4a8.h. Each output row's weights are
// expanded once to the integers the tensor cores see, then plain INT32 dot products.
#include "backends/ref_cpu/gemm_w4a8.h"

#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "formats/formats.h"

namespace qs::ref_cpu {

const char* weight_format_name(WeightFormat v) {
  switch (v) {
    case WeightFormat::kW4A8PerChannel: return "w4a8_per_channel";
    case WeightFormat::kW4A8G128: return "w4a8_g128";
    case WeightFormat::kW8A8: return "w8a8";
  }
  return "?";
}

void check_qgemm_args(const QGemmWeights& w, const QGemmActs& x) {
  QS_CHECK(w.n > 0 && w.k > 0) << "qgemm: weight shape [" << w.n << ", " << w.k << "] must be positive";
  QS_CHECK(x.m >= 0) << "qgemm: negative token count " << x.m;
  QS_CHECK(w.q && w.scale) << "qgemm: weights or weight scales missing";
  QS_CHECK(x.m == 0 || (x.q && x.scale)) << "qgemm: activations or activation scales missing";
  switch (w.variant) {
    case WeightFormat::kW4A8PerChannel:
      QS_CHECK(w.k % 2 == 0) << "qgemm w4a8_per_channel: K=" << w.k << " must be even (two nibbles a byte)";
      QS_CHECK(w.szero) << "qgemm w4a8_per_channel: scaled zeros (sz) missing";
      QS_CHECK(x.m == 0 || x.sum) << "qgemm w4a8_per_channel: activation sums (xsum) missing";
      break;
    case WeightFormat::kW4A8G128:
      QS_CHECK(w.k % fmt4::kGroupSize == 0)
          << "qgemm w4a8_g128: K=" << w.k << " must be a multiple of the group size " << fmt4::kGroupSize;
      QS_CHECK(w.s2 && w.zn) << "qgemm w4a8_g128: group scales (s2) or negated zeros (zn) missing";
      break;
    case WeightFormat::kW8A8: break;
  }
}

int32_t qgemm_int_weight(const QGemmWeights& w, int64_t n, int64_t k) {
  switch (w.variant) {
    case WeightFormat::kW4A8PerChannel: return fmt4::get_nibble(w.q + n * (w.k / 2), k);
    case WeightFormat::kW4A8G128: {
      const int64_t g = n * (w.k / fmt4::kGroupSize) + k / fmt4::kGroupSize;
      return fmt4::dequant_w4_g128_to_int8(fmt4::get_nibble(w.q + n * (w.k / 2), k), w.s2[g], w.zn[g]);
    }
    case WeightFormat::kW8A8: return int8_t(w.q[n * w.k + k]);
  }
  return 0;
}

void dequantize_weights(const QGemmWeights& w, float* out) {
  QS_CHECK(w.n > 0 && w.k > 0 && w.q && w.scale) << "dequantize_weights: empty or missing weights";
  parallel_for(w.n, [&](int64_t b, int64_t e) {
    for (int64_t n = b; n < e; ++n) {
      const float s = fp16_to_float(w.scale[n]);
      const float sz = w.variant == WeightFormat::kW4A8PerChannel ? fp16_to_float(w.szero[n]) : 0.0f;
      for (int64_t k = 0; k < w.k; ++k) out[n * w.k + k] = float(qgemm_int_weight(w, n, k)) * s - sz;
    }
  });
}

void qgemm(const QGemmWeights& w, const QGemmActs& x, const QGemmEpilogue& epi, float* y, int32_t* acc) {
  check_qgemm_args(w, x);
  QS_CHECK(y || acc) << "qgemm: no output (y and acc are both null)";
  const int64_t M = x.m, N = w.n, K = w.k;
  // Parallel over output channels: each task expands its weight row once and dots it with every token.
  parallel_for(N, [&](int64_t b, int64_t e) {
    std::vector<int32_t> wrow(static_cast<size_t>(K));
    for (int64_t n = b; n < e; ++n) {
      for (int64_t k = 0; k < K; ++k) wrow[size_t(k)] = qgemm_int_weight(w, n, k);
      const float sw = fp16_to_float(w.scale[n]);
      const float sz = w.variant == WeightFormat::kW4A8PerChannel ? fp16_to_float(w.szero[n]) : 0.0f;
      const float bias = epi.bias ? fp16_to_float(epi.bias[n]) : 0.0f;
      for (int64_t m = 0; m < M; ++m) {
        const int8_t* xr = x.q + m * K;
        int32_t a = 0;
        for (int64_t k = 0; k < K; ++k) a += int32_t(xr[k]) * wrow[size_t(k)];
        if (acc) acc[m * N + n] = a;
        if (!y) continue;
        float v = float(a) * sw * fp16_to_float(x.scale[m]);
        if (w.variant == WeightFormat::kW4A8PerChannel) v -= sz * fp16_to_float(x.sum[m]);
        if (epi.bias) v += bias;
        if (epi.residual) v += fp16_to_float(epi.residual[m * N + n]);
        y[m * N + n] = v;
      }
    }
  }, 4);
}

}  // namespace qs::ref_cpu
