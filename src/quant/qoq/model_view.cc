// ModelWeights view of a loaded model (see model_view.h).
#include "quant/qoq/model_view.h"

#include "core/error.h"

namespace qs::quant::qoq {

model::FpLinear& fp_linear(model::Model& m, const std::string& name) {
  auto* f = dynamic_cast<model::FpLinear*>(m.linear_slot(name).get());
  QS_CHECK(f != nullptr) << "QoQ: linear " << name << " is not an FP32 linear (" << m.linear(name).kind()
                         << "); transformations need the FP model";
  return *f;
}

ModelWeights weights_view(model::Model& m) {
  ModelWeights v;
  v.config = m.config();
  auto& w = m.weights();
  v.embed = &w.embed_tokens;
  v.final_norm = &w.final_norm;
  v.lm_head = &fp_linear(m, "lm_head").mutable_weight();
  for (int i = 0; i < m.config().num_layers; ++i) {
    auto& dl = w.layers[size_t(i)];
    const std::string p = "model.layers." + std::to_string(i) + ".";
    LayerWeights l;
    l.input_norm = &dl.input_norm;
    l.post_norm = &dl.post_attn_norm;
    auto lin = [&](const char* n) -> model::FpLinear& { return fp_linear(m, p + n); };
    l.q = &lin("self_attn.q_proj").mutable_weight();
    l.k = &lin("self_attn.k_proj").mutable_weight();
    l.v = &lin("self_attn.v_proj").mutable_weight();
    l.o = &lin("self_attn.o_proj").mutable_weight();
    l.gate = &lin("mlp.gate_proj").mutable_weight();
    l.up = &lin("mlp.up_proj").mutable_weight();
    l.down = &lin("mlp.down_proj").mutable_weight();
    l.q_bias = &lin("self_attn.q_proj").mutable_bias();
    l.k_bias = &lin("self_attn.k_proj").mutable_bias();
    l.v_bias = &lin("self_attn.v_proj").mutable_bias();
    for (const char* n : {"self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"})
      QS_CHECK(!lin(n).has_bias()) << "QoQ: " << p << n << " has a bias, which no Llama-family model has";
    v.layers.push_back(l);
  }
  check_weights(v);
  return v;
}

}  // namespace qs::quant::qoq
