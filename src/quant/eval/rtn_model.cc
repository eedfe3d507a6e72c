// In-memory RTN quantization of an FP model for evaluation (see rtn_model.h).
#include "quant/eval/rtn_model.h"

#include "core/error.h"
#include "model/linear.h"
#include "model/quantized/quantized_linear.h"
#include "quant/weight_quant.h"

namespace qs::quant::eval {

namespace {


struct SchemeInfo {
  RtnScheme scheme;
  const char* name;
  WeightFormat variant;
  model::ActMode act;
};
constexpr SchemeInfo kSchemes[] = {
    {RtnScheme::kW8A8, "w8a8", WeightFormat::kW8A8, model::ActMode::kInt8},
    {RtnScheme::kW4A8PerChannel, "w4a8-per-channel", WeightFormat::kW4A8PerChannel, model::ActMode::kInt8},
    {RtnScheme::kW4A8G128, "w4a8-g128", WeightFormat::kW4A8G128, model::ActMode::kInt8},
    {RtnScheme::kW4A16PerChannel, "w4a16-per-channel", WeightFormat::kW4A8PerChannel, model::ActMode::kFloat},
    {RtnScheme::kW4A16G128, "w4a16-g128", WeightFormat::kW4A8G128, model::ActMode::kFloat},
};

const SchemeInfo& info(RtnScheme s) {
  for (const auto& i : kSchemes)
    if (i.scheme == s) return i;
  QS_FAIL() << "unknown RTN scheme";
  return kSchemes[0];
}

Tensor to_fp16(const Tensor& f32) {
  Tensor t(DType::F16, f32.shape());
  const float* s = f32.data<float>();
  uint16_t* d = t.data<uint16_t>();
  for (int64_t i = 0; i < f32.numel(); ++i) d[i] = float_to_fp16(s[i]);
  return t;
}

void round_in_place(Tensor& t) {
  t = t.clone();  // never write through storage shared with someone else (tied lm_head, an mmap)
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = round_fp16(p[i]);
}

model::QuantizedWeights quantize_weight(const Tensor& w, WeightFormat v) {
  model::QuantizedWeights q;
  q.variant = v;
  if (v == WeightFormat::kW4A8PerChannel) {
    auto r = quant::quantize_w4_per_channel(w);
    q.qweight = r.qweight;
    q.scale = r.scale;
    q.szero = r.szero;
  } else if (v == WeightFormat::kW4A8G128) {
    auto r = quant::quantize_w4_g128(w);
    q.qweight = r.qweight;
    q.scale = r.s1;
    q.s2 = r.s2;
    q.zn = r.zn;
  } else {
    auto r = quant::quantize_int8_per_channel(w);
    q.qweight = r.qweight;
    q.scale = r.scale;
  }
  return q;
}

}  // namespace

const char* rtn_scheme_name(RtnScheme s) { return info(s).name; }

RtnScheme parse_rtn_scheme(const std::string& s) {
  std::string names;
  for (const auto& i : kSchemes) {
    if (s == i.name) return i.scheme;
    names += names.empty() ? "" : ", ";
    names += i.name;
  }
  QS_FAIL() << "unknown quantization scheme '" << s << "' (expected one of: " << names << ")";
  return RtnScheme::kW8A8;
}

void round_fp_parts_to_fp16(model::Model& m) {
  auto& w = m.weights();
  if (!dynamic_cast<const model::Fp16Linear*>(w.lm_head.get())) {
    const auto* fp = dynamic_cast<const model::FpLinear*>(w.lm_head.get());
    QS_CHECK(fp) << "round_fp_parts_to_fp16: lm_head is '" << w.lm_head->kind() << "', not an FP linear";
    QS_CHECK(!fp->has_bias()) << "round_fp_parts_to_fp16: an lm_head with a bias is not supported";
    w.lm_head = std::make_unique<model::Fp16Linear>(fp->weight(), m.backend());
  }
  round_in_place(w.embed_tokens);
  round_in_place(w.final_norm);
  for (auto& l : w.layers) {
    round_in_place(l.input_norm);
    round_in_place(l.post_attn_norm);
  }
}

void apply_rtn(model::Model& m, RtnScheme s) {
  const SchemeInfo& si = info(s);
  round_fp_parts_to_fp16(m);
  for (const std::string& name : m.linear_names()) {
    if (name == "lm_head") continue;
    std::unique_ptr<model::Linear>& slot = m.linear_slot(name);
    const auto* fp = dynamic_cast<const model::FpLinear*>(slot.get());
    QS_CHECK(fp) << "apply_rtn: linear " << name << " is '" << slot->kind() << "', not an FP32 linear";
    model::QuantizedWeights q = quantize_weight(fp->weight(), si.variant);
    if (fp->has_bias()) q.bias = to_fp16(fp->bias());
    slot = std::make_unique<model::QuantizedLinear>(std::move(q), si.act, m.backend(), name);
  }
}

}  // namespace qs::quant::eval
