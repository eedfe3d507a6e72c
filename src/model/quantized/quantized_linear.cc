// Quantized linear layers (see quantized_linear.h): per-token INT8 activation quantization + the exact integer
// GEMM reference, weight-only mode on dequantized weights, and the FP16 lm_head.
#include "model/quantized/quantized_linear.h"

#include "core/error.h"
#include "core/thread_pool.h"
#include "formats/formats.h"

namespace qs::model {

namespace {


void check_tensor(const Tensor& t, DType dt, const Shape& shape, const std::string& name, const char* what) {
  QS_CHECK(t.raw() != nullptr) << "quantized linear '" << name << "': tensor " << what << " missing";
  QS_CHECK(t.dtype() == dt && t.shape() == shape)
      << "quantized linear '" << name << "': " << what << " must be " << dtype_name(dt) << shape_str(shape)
      << ", got " << t.desc();
}

}  // namespace

QuantizedActs quantize_acts(const float* x, int64_t m, int64_t k) {
  QuantizedActs a;
  a.q.resize(size_t(m * k));
  a.scale.resize(size_t(m));
  a.sum.resize(size_t(m));
  parallel_for(m, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const fmt4::ActQuantRow r = fmt4::quantize_act_row(x + i * k, k, a.q.data() + i * k);
      a.scale[size_t(i)] = r.scale;
      a.sum[size_t(i)] = r.sum;
    }
  }, 16);
  return a;
}

QuantizedLinear::QuantizedLinear(QuantizedWeights w, ActMode act, const backends::Backend& backend,
                                 const std::string& name)
    : Linear(w.qweight.ndim() == 2 ? w.qweight.dim(1) * (w.variant == WeightFormat::kW8A8 ? 1 : 2) : 0,
             w.qweight.ndim() == 2 ? w.qweight.dim(0) : 0),
      w_(std::move(w)),
      act_(act),
      backend_(&backend) {
  const bool w4 = w_.variant != WeightFormat::kW8A8;
  QS_CHECK(w_.qweight.ndim() == 2 && w_.qweight.dtype() == (w4 ? DType::U8 : DType::I8) && out > 0 && in > 0)
      << "quantized linear '" << name << "': qweight must be " << (w4 ? "U8 [N, K/2]" : "I8 [N, K]") << ", got "
      << w_.qweight.desc();
  check_tensor(w_.scale, DType::F16, {out}, name, "scale");
  if (w_.variant == WeightFormat::kW4A8PerChannel) check_tensor(w_.szero, DType::F16, {out}, name, "szero");
  if (w_.variant == WeightFormat::kW4A8G128) {
    QS_CHECK(in % fmt4::kGroupSize == 0) << "quantized linear '" << name << "': K = " << in
                                         << " is not a multiple of the group size " << fmt4::kGroupSize;
    check_tensor(w_.s2, DType::U8, {out, in / fmt4::kGroupSize}, name, "s2");
    check_tensor(w_.zn, DType::I8, {out, in / fmt4::kGroupSize}, name, "zn");
  }
  if (w_.bias.raw() != nullptr) check_tensor(w_.bias, DType::F16, {out}, name, "bias");
  if (act_ == ActMode::kFloat) {
    deq_ = dequantized_weight();
    if (w_.bias.raw() != nullptr) bias_f32_ = w_.bias.to_f32();
  }
}

ref_cpu::QGemmWeights QuantizedLinear::gemm_weights() const {
  ref_cpu::QGemmWeights g;
  g.variant = w_.variant;
  g.n = out;
  g.k = in;
  g.q = static_cast<const uint8_t*>(w_.qweight.raw());
  g.scale = w_.scale.data<uint16_t>();
  if (w_.variant == WeightFormat::kW4A8PerChannel) g.szero = w_.szero.data<uint16_t>();
  if (w_.variant == WeightFormat::kW4A8G128) {
    g.s2 = w_.s2.data<uint8_t>();
    g.zn = w_.zn.data<int8_t>();
  }
  return g;
}

Tensor QuantizedLinear::dequantized_weight() const {
  Tensor t(DType::F32, {out, in});
  ref_cpu::dequantize_weights(gemm_weights(), t.data<float>());
  return t;
}

std::string QuantizedLinear::kind() const {
  switch (w_.variant) {
    case WeightFormat::kW4A8PerChannel: return act_ == ActMode::kInt8 ? "w4a8-per-channel" : "w4a16-per-channel";
    case WeightFormat::kW4A8G128: return act_ == ActMode::kInt8 ? "w4a8-g128" : "w4a16-g128";
    case WeightFormat::kW8A8: return act_ == ActMode::kInt8 ? "w8a8" : "w8a16";
  }
  return "?";
}

void QuantizedLinear::forward(const float* x, int64_t m, float* y) const {
  if (m == 0) return;
  if (act_ == ActMode::kFloat) {
    backend_->linear(x, deq_.data<float>(), bias_f32_.raw() ? bias_f32_.data<float>() : nullptr, m, in, out, y);
    return;
  }
  const QuantizedActs a = quantize_acts(x, m, in);
  ref_cpu::QGemmEpilogue epi;
  if (w_.bias.raw() != nullptr) epi.bias = w_.bias.data<uint16_t>();
  ref_cpu::qgemm(gemm_weights(), a.view(m), epi, y);
}

Fp16Linear::Fp16Linear(const Tensor& weight, const backends::Backend& backend)
    : Linear(weight.ndim() == 2 ? weight.dim(1) : 0, weight.ndim() == 2 ? weight.dim(0) : 0),
      w_(weight.to_f32()),  // always a fresh copy: rounding never touches the caller's tensor
      backend_(&backend) {
  QS_CHECK(weight.ndim() == 2 && in > 0 && out > 0) << "Fp16Linear needs a 2-D [out, in] weight, got "
                                                     << weight.desc();
  float* p = w_.data<float>();
  for (int64_t i = 0; i < w_.numel(); ++i) p[i] = round_fp16(p[i]);
}

void Fp16Linear::forward(const float* x, int64_t m, float* y) const {
  if (m == 0) return;
  backend_->linear(x, w_.data<float>(), nullptr, m, in, out, y);
}

}  // namespace qs::model
