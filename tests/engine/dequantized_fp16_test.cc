// The W4A16 rows on the GPU (engine/cuda: a quantized model's weights dequantized to FP16 at load, the FP16 path
// runs them) vs the CPU reference (the same dequantized weights in FP32): how far the FP16 rounding of each
// dequantized weight is, measured on qs-llama-tiny with in-memory RTN (g128 and per-channel), through the very
// conversion the runner uploads with (weight_fusion.h fuse_fp16_rows). Bound, derived: round-to-nearest-even to
// FP16 changes a normal value by at most 2^-11 of it (half an ulp of an 11-bit significand), a subnormal one by at
// most 2^-25; nothing overflows (|w| << 65504). The normalized error is printed for ACCURACY.md.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

#include "common/test_util.h"
#include "core/dtype.h"
#include "engine/weight_fusion.h"
#include "model/model.h"
#include "model/quantized/quantized_linear.h"
#include "quant/eval/rtn_model.h"

namespace qs {
namespace {

void check_scheme(quant::eval::RtnScheme scheme) {
  auto m = model::Model::load(test::data_path("models/qs-llama-tiny"));
  quant::eval::apply_rtn(*m, scheme);
  double err2 = 0.0, ref2 = 0.0, worst_rel = 0.0;
  int64_t n = 0;
  for (const auto& layer : m->weights().layers) {
    for (const model::Linear* l : {layer.q_proj.get(), layer.k_proj.get(), layer.v_proj.get(), layer.o_proj.get(),
                                   layer.gate_proj.get(), layer.up_proj.get(), layer.down_proj.get()}) {
      const auto* q = dynamic_cast<const model::QuantizedLinear*>(l);
      ASSERT_NE(q, nullptr);
      const Tensor w = q->dequantized_weight();
      const std::vector<uint16_t> h = engine::fuse_fp16_rows({&w});
      ASSERT_EQ(int64_t(h.size()), w.numel());
      const float* f = w.data<float>();
      for (int64_t i = 0; i < w.numel(); ++i) {
        const double x = f[i], y = fp16_to_float(h[size_t(i)]);
        const double e = std::abs(y - x);
        EXPECT_LE(e, std::max(std::abs(x) * 0x1p-11, 0x1p-25)) << "weight " << i << " = " << x;
        if (std::abs(x) >= 0x1p-14) worst_rel = std::max(worst_rel, e / std::abs(x));
        err2 += e * e;
        ref2 += x * x;
        ++n;
      }
    }
  }
  const double nerr = std::sqrt(err2 / ref2);
  std::printf("%s: %lld weights, FP16(dequantized) vs FP32 dequantized: normalized error %.3g, max relative %.3g\n",
              quant::eval::rtn_scheme_name(scheme), (long long)n, nerr, worst_rel);
  EXPECT_GT(nerr, 0.0);            // the dequantized values are not all FP16-exact (11+4 bits / 11+8 bits)
  EXPECT_LT(nerr, 0x1p-11);        // and the rounding stays within half an FP16 ulp
}

TEST(DequantizedFp16, W4A16G128RoundingIsWithinHalfAnUlp) {
  QS_REQUIRE_DATA("models/qs-llama-tiny");
  check_scheme(quant::eval::RtnScheme::kW4A16G128);
}

TEST(DequantizedFp16, W4A16PerChannelRoundingIsWithinHalfAnUlp) {
  QS_REQUIRE_DATA("models/qs-llama-tiny");
  check_scheme(quant::eval::RtnScheme::kW4A16PerChannel);
}

}  // namespace
}  // namespace qs
