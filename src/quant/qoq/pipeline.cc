// The QoQ pipeline (see pipeline.h; every choice is explained in docs/QOQ.md).
#include "quant/qoq/pipeline.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <future>
#include <numeric>
#include <sstream>

#include "core/error.h"
#include "core/logging.h"
#include "formats/formats.h"
#include "quant/cuda/layer_runner_cuda.h"
#include "quant/hadamard.h"
#include "quant/qoq/model_view.h"
#include "quant/qoq/progress.h"
#include "quant/qoq/smooth_attention_search.h"

namespace qs::quant::qoq {
namespace {

// Settings as decimal numbers in the metadata (0.3, not 0.30000001192092896).
double dec(float x) { return std::round(double(x) * 1e6) / 1e6; }

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

bool is_g128(const QoqOptions& o) { return o.variant == WeightFormat::kW4A8G128; }

// y [m, n] = x [m, k] W^T on the model's backend.
std::vector<float> matmul(const backends::Backend& be, const float* x, int64_t m, const Tensor& w) {
  std::vector<float> y(static_cast<size_t>(m * w.dim(0)));
  if (m > 0) be.linear(x, w.data<float>(), nullptr, m, w.dim(1), w.dim(0), y.data());
  return y;
}

double sq_dist(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0.0;
  for (size_t i = 0; i < a.size(); ++i) s += (double(a[i]) - double(b[i])) * (double(a[i]) - double(b[i]));
  return s;
}
double sum_of(const std::vector<double>& a) {
  double s = 0.0;
  for (double v : a) s += v;
  return s;
}
double sq_norm(const std::vector<float>& a) {
  double s = 0.0;
  for (float v : a) s += double(v) * double(v);
  return s;
}

// Round-to-nearest dequantized weights in the pipeline's variant (used by the smoothing grid search).
Tensor rtn_dequant(const Tensor& w, WeightFormat v) {
  return v == WeightFormat::kW4A8G128 ? quantize_w4_g128(w).dequant : quantize_w4_per_channel(w).dequant;
}

// Per-token INT8 fake quantization of activations (formats.h), in place: what the W4A8 GEMM sees.
void fake_quant_act(std::vector<float>& x, int64_t m, int64_t k) {
  std::vector<int8_t> q(static_cast<size_t>(k));
  for (int64_t r = 0; r < m; ++r) {
    float* row = x.data() + r * k;
    const float s = fp16_to_float(fmt4::quantize_act_row(row, k, q.data()).scale);
    for (int64_t j = 0; j < k; ++j) row[j] = float(q[size_t(j)]) * s;
  }
}

// Grid search of the down_proj smoothing exponents: for each (a, b) (and (0, 0) = no smoothing) the MLP output on
// the sample rows with RTN-quantized up/down weights (smoothed) and INT8 down_proj inputs, against the FP MLP.
// gate is RTN-quantized once (smoothing does not touch it). Returns the best (a, b).
std::pair<float, float> search_smooth_down(const backends::Backend& be, const LayerWeights& l,
                                           const std::vector<float>& xmax, const Tensor& rows, WeightFormat v) {
  const int64_t m = rows.dim(0), f = l.down->dim(1);
  const float* x = rows.data<float>();
  const std::vector<float> gate = matmul(be, x, m, *l.gate), up = matmul(be, x, m, *l.up);
  std::vector<float> act(gate.size());
  be.silu_mul(gate.data(), up.data(), int64_t(act.size()), act.data());
  const std::vector<float> ref = matmul(be, act.data(), m, *l.down);
  const std::vector<float> gate_q = matmul(be, x, m, rtn_dequant(*l.gate, v));
  std::pair<float, float> best{0.0f, 0.0f};
  double best_err = INFINITY;
  std::vector<std::pair<float, float>> grid{{0.0f, 0.0f}};
  for (int ia = 0; ia <= 5; ++ia)
    for (int ib = 5; ib <= 10; ++ib) grid.push_back({0.1f * float(ia), 0.1f * float(ib)});
  for (auto [a, b] : grid) {
    const std::vector<float> s = a == 0.0f && b == 0.0f ? std::vector<float>(size_t(f), 1.0f)
                                                        : smooth_down_scales(xmax, *l.down, a, b);
    Tensor up_s = l.up->clone(), down_s = l.down->clone();
    LayerWeights tmp;
    tmp.up = &up_s;
    tmp.down = &down_s;
    apply_smooth_down(tmp, s);
    const std::vector<float> up_q = matmul(be, x, m, rtn_dequant(up_s, v));
    std::vector<float> a_q(gate_q.size());
    be.silu_mul(gate_q.data(), up_q.data(), int64_t(a_q.size()), a_q.data());
    fake_quant_act(a_q, m, f);
    const double err = sq_dist(matmul(be, a_q.data(), m, rtn_dequant(down_s, v)), ref);
    if (err < best_err) {
      best_err = err;
      best = {a, b};
    }
  }
  return best;
}

}  // namespace

QoqOptions QoqOptions::rtn(WeightFormat v) {
  QoqOptions o;
  o.variant = v;
  o.rotate = o.smooth_attn = o.smooth_down = o.reorder = o.clip = o.gptq = false;
  return o;
}

float QoqOptions::down_alpha() const {
  return smooth_down_alpha >= 0.0f ? smooth_down_alpha : (variant == WeightFormat::kW4A8G128 ? 0.3f : 0.1f);
}
float QoqOptions::down_beta() const {
  return smooth_down_beta >= 0.0f ? smooth_down_beta : (variant == WeightFormat::kW4A8G128 ? 0.7f : 0.9f);
}

nlohmann::json QoqOptions::to_json() const {
  nlohmann::json j;
  j["variant"] = weight_format_name(variant);
  j["rotate"] = rotate;
  j["smooth_attention"] = smooth_attn;
  j["smooth_attention_search"] = smooth_attn && smooth_attn_search;
  if (smooth_attn && !smooth_attn_search) j["smooth_attention_alpha"] = dec(smooth_attn_alpha);
  if (smooth_attn && smooth_attn_search) {
    j["smooth_attention_granularity"] = smooth_attn_per_head ? "kv_head" : "layer";
    j["smooth_attention_windows"] = smooth_attn_windows;
    j["smooth_attention_queries"] = smooth_attn_queries;
  }
  j["smooth_down"] = smooth_down;
  j["smooth_down_search"] = smooth_down && smooth_down_search;
  if (smooth_down && !smooth_down_search) {
    j["smooth_down_alpha"] = dec(down_alpha());
    j["smooth_down_beta"] = dec(down_beta());
  }
  j["reorder"] = reorder && variant == WeightFormat::kW4A8G128;
  j["clip"] = clip && variant == WeightFormat::kW4A8PerChannel;
  j["clip_steps"] = clip_steps;
  j["gptq"] = gptq;
  j["gptq_damp"] = gptq_options.damp;
  j["gptq_block_size"] = gptq_options.block_size;
  j["calib_samples"] = calib_samples;
  j["calib_len"] = calib_len;
  j["calib_seed"] = calib_seed;
  j["hessian_stride"] = hessian_stride;
  j["sample_rows"] = sample_rows;
  // Each layer is calibrated on the outputs of the layers before it: FP, or with their weights dequantized.
  j["propagation"] = propagate_quantized ? "quantized" : "fp";
  j["calibration_device"] = cuda ? "cuda" : "cpu";
  return j;
}

LayerReport quantize_layer(model::Model& model, CalibrationRunner& runner, int model_layer, int li, int num_layers,
                           LayerWeights& lw, const QoqOptions& opt, Progress& bar,
                           std::map<std::string, QuantizedLinear>& out) {
  const auto& c = model.config();
  const auto& be = model.backend();
  const bool reorder = opt.reorder && is_g128(opt), clip = opt.clip && !is_g128(opt);
  const auto& names = model::kLayerLinearNames;
  const LinearInput inputs[model::kNumLayerLinears] = {LinearInput::kQkv, LinearInput::kQkv,    LinearInput::kQkv, LinearInput::kO,
                                 LinearInput::kGateUp, LinearInput::kGateUp, LinearInput::kDown};
  GptqOptions gptq_opt = opt.gptq_options;
  gptq_opt.cuda = gptq_opt.cuda || opt.cuda;
  const auto t_layer = Clock::now();
  const std::string lname = "layer " + std::to_string(li + 1) + "/" + std::to_string(num_layers);
  LayerReport rep;
  rep.layer = li;
  // (1) one calibration pass through the layer as it is now (after the global rotations): statistics, Hessians
  // and sample rows; the hidden states move on to the layer's FP output (which the transformations below do not
  // change).
  bar.advance(0, lname + ": calibration pass");
  CaptureOptions co;
  co.hessians = opt.gptq;
  co.hessian_stride = opt.hessian_stride;
  co.keys = opt.smooth_attn;
  if (opt.smooth_attn && opt.smooth_attn_search) {
    co.attn_windows = opt.smooth_attn_windows;
    co.attn_queries = opt.smooth_attn_queries;
  }
  co.keep_rows = opt.sample_rows;
  co.cancelled = opt.cancelled;
  LayerCapture cap = runner.run(model_layer, co, /*advance=*/!opt.propagate_quantized);
  LayerInputs in = take_inputs(cap);
  rep.phase_seconds[0] = since(t_layer);
  auto t_phase = Clock::now();
  bar.advance(3, lname + ": transforming and quantizing");
  // (2) transformations. SmoothAttention scales q/k outputs: no linear input changes. Down smoothing and
  // reordering scale/permute input channels: the captured Hessians and rows are re-expressed to match.
  if (opt.smooth_attn) {
    std::vector<float> lambda;
    if (opt.smooth_attn_search) {
      const auto t_search = Clock::now();
      const std::vector<float> grid = default_alpha_grid();
      const SmoothAttentionChoice ch =
          search_smooth_attention(cap.attn, cap.key_max, c, grid, opt.smooth_attn_per_head);
      double norm = ch.fp_norm, half = 0.0, none = 0.0;
      for (size_t i = 0; i < grid.size(); ++i)
        for (double e : ch.err[i]) {
          if (grid[i] == 0.5f) half += e;
          if (grid[i] == 0.0f) none += e;
        }
      norm = std::max(norm, 1e-300);
      rep.attn_err = std::sqrt(ch.chosen_err / norm);
      rep.attn_err_half = std::sqrt(half / norm);
      rep.attn_err_none = std::sqrt(none / norm);
      // Diagnostics (3 more evaluations): keys-only / values-only KV4, and a per-channel value smoothing probe.
      std::vector<float> vmax(size_t(c.kv_size()), 0.0f);
      for (size_t i = 0; i < cap.attn.v.size(); ++i)
        vmax[i % vmax.size()] = std::max(vmax[i % vmax.size()], std::fabs(cap.attn.v[i]));
      for (float& x : vmax) x = x > 0.0f ? std::sqrt(x) : 1.0f;
      const auto diag = kv4_attention_errors(
          cap.attn, c, {{ch.lambda, true, false, {}}, {ch.lambda, false, true, {}}, {ch.lambda, false, true, vmax}});
      rep.attn_err_k = std::sqrt(sum_of(diag[0]) / norm);
      rep.attn_err_v = std::sqrt(sum_of(diag[1]) / norm);
      rep.attn_err_v_smooth = std::sqrt(sum_of(diag[2]) / norm);
      rep.search_seconds += since(t_search);
      rep.attn_alpha = ch.alpha;
      lambda = ch.lambda;
    } else {
      rep.attn_alpha.assign(size_t(c.num_kv_heads), opt.smooth_attn_alpha);
      lambda = smooth_attention_scales(cap.key_max, c, opt.smooth_attn_alpha);
    }
    apply_smooth_attention(lw, c, lambda);
    cap.attn = AttentionSample();  // free the sample before quantizing
  }
  const std::vector<float>& down_max = cap.absmax[int(LinearInput::kDown)];
  std::vector<float> s(size_t(c.intermediate_size), 1.0f);
  if (opt.smooth_down) {
    const auto t_search = Clock::now();
    std::tie(rep.down_alpha, rep.down_beta) =
        opt.smooth_down_search
            ? search_smooth_down(be, lw, down_max, in.rows[int(LinearInput::kGateUp)], opt.variant)
            : std::make_pair(opt.down_alpha(), opt.down_beta());
    rep.search_seconds += since(t_search);
    if (rep.down_alpha != 0.0f || rep.down_beta != 0.0f) {
      s = smooth_down_scales(down_max, *lw.down, rep.down_alpha, rep.down_beta);
      apply_smooth_down(lw, s);
    }
  }
  std::vector<int32_t> down_perm(s.size());
  std::iota(down_perm.begin(), down_perm.end(), 0);
  if (reorder) {
    // down_proj inputs by the maximum the quantized layer will see (after smoothing: max|X_j| / s_j).
    std::vector<float> stat(s.size());
    for (size_t j = 0; j < s.size(); ++j) stat[j] = down_max[j] / s[j];
    down_perm = ascending_order(stat.data(), int64_t(stat.size()));
    reorder_down(lw, down_perm);
    // o_proj inputs within each KV head: by the maximum over the group's query heads.
    std::vector<std::vector<int32_t>> perms;
    std::vector<int32_t> o_perm(size_t(c.q_size()));
    const int64_t d = c.head_dim;
    for (int g = 0; g < c.num_kv_heads; ++g) {
      std::vector<float> hs(size_t(d), 0.0f);
      for (int h = g * c.gqa_ratio(); h < (g + 1) * c.gqa_ratio(); ++h)
        for (int64_t j = 0; j < d; ++j)
          hs[size_t(j)] = std::max(hs[size_t(j)], cap.absmax[int(LinearInput::kO)][size_t(h * d + j)]);
      perms.push_back(ascending_order(hs.data(), d));
      for (int h = g * c.gqa_ratio(); h < (g + 1) * c.gqa_ratio(); ++h)
        for (int64_t j = 0; j < d; ++j) o_perm[size_t(h * d + j)] = int32_t(h * d + perms.back()[size_t(j)]);
    }
    reorder_value_heads(lw, c, perms);
    permute_scale_input(in, LinearInput::kO, o_perm, {});
  }
  if (opt.smooth_down || reorder) {
    std::vector<float> inv(s.size());
    for (size_t j = 0; j < s.size(); ++j) inv[j] = 1.0f / s[j];
    permute_scale_input(in, LinearInput::kDown, down_perm, inv);
  }
  rep.phase_seconds[1] = since(t_phase);
  t_phase = Clock::now();
  // (4) quantize the seven linears. Each one's error report (two matmuls on the backend) runs as a background task
  // while the next linears are quantized; the phase waits for the reports at its end.
  Tensor* weights[7] = {lw.q, lw.k, lw.v, lw.o, lw.gate, lw.up, lw.down};
  std::vector<std::future<double>> errors;
  for (int j = 0; j < 7; ++j) {
    QS_CHECK(!(opt.cancelled && opt.cancelled())) << "interrupted";
    const std::string name = "model.layers." + std::to_string(li) + "." + names[j];
    const Tensor& wt = *weights[j];
    const Tensor& rows = in.rows[int(inputs[j])];
    const auto& h = in.hessian[int(inputs[j])];
    LinearReport lr;
    lr.name = name;
    lr.n = wt.dim(0);
    lr.k = wt.dim(1);
    Tensor deq;
    if (is_g128(opt)) {
      W4G128Weight q = opt.gptq ? gptq_w4_g128(wt, h, kProtectiveRange, gptq_opt) : quantize_w4_g128(wt);
      deq = q.dequant;
      out.emplace(name, std::move(q));
    } else {
      std::vector<float> ratios;
      if (clip) {
        ratios = search_clip_ratios(wt, rows.data<float>(), rows.dim(0), opt.clip_steps);
        double sum = 0;
        for (float r : ratios) sum += r;
        lr.mean_clip = float(sum / double(ratios.size()));
      }
      W4PerChannelWeight q = opt.gptq ? gptq_w4_per_channel(wt, h, ratios, gptq_opt)
                                      : quantize_w4_per_channel(wt, ratios);
      deq = q.dequant;
      out.emplace(name, std::move(q));
    }
    errors.push_back(std::async(std::launch::async, [&be, &rows, &wt, deq] {
      const std::vector<float> y = matmul(be, rows.data<float>(), rows.dim(0), wt);
      return std::sqrt(sq_dist(matmul(be, rows.data<float>(), rows.dim(0), deq), y) / std::max(sq_norm(y), 1e-300));
    }));
    rep.linears.push_back(lr);
  }
  const auto t_report = Clock::now();
  const size_t first = rep.linears.size() - errors.size();
  for (size_t j = 0; j < errors.size(); ++j) rep.linears[first + j].rel_error = errors[j].get();
  rep.report_seconds = since(t_report);
  rep.phase_seconds[2] = since(t_phase);
  t_phase = Clock::now();
  if (opt.propagate_quantized) {
    // The layer's output with dequantized weights becomes the next layer's input; FP weights restored after.
    bar.advance(0, lname + ": propagating");
    Tensor fp_w[7];
    for (int j = 0; j < 7; ++j) {
      const std::string name = "model.layers." + std::to_string(li) + "." + names[j];
      fp_w[j] = *weights[j];
      *weights[j] = std::visit([](const auto& q) { return q.dequant; }, out.at(name));
    }
    CaptureOptions none;
    none.absmax = false;
    none.keys = false;
    none.cancelled = opt.cancelled;
    runner.run(model_layer, none, /*advance=*/true);
    for (int j = 0; j < 7; ++j) *weights[j] = fp_w[j];
    bar.advance(1, lname + ": propagated");
  }
  rep.phase_seconds[3] = since(t_phase);
  rep.seconds = since(t_layer);
  bar.advance(1, li + 1 < num_layers ? "layer " + std::to_string(li + 2) + "/" + std::to_string(num_layers)
                                     : "done");
  return rep;
}

std::unique_ptr<CalibrationRunner> make_runner(model::Model& model, const CalibrationSet& calib,
                                               const QoqOptions& opt) {
  if (opt.cuda) return make_cuda_layer_runner(model, calib);
  return std::make_unique<LayerRunner>(model, calib, opt.windows_per_call);
}

QoqResult run_qoq(model::Model& model, const CalibrationSet& calib, const QoqOptions& opt) {
  const auto t_start = Clock::now();
  QS_CHECK(opt.variant == WeightFormat::kW4A8PerChannel || opt.variant == WeightFormat::kW4A8G128)
      << "QoQ quantizes to W4 (per-channel or g128), not " << weight_format_name(opt.variant);
  QS_CHECK(!calib.windows.empty()) << "QoQ: no calibration windows";
  const auto& c = model.config();
  ModelWeights w = weights_view(model);
  QoqResult res;
  res.settings = opt.to_json();
  res.settings["calib_text_tokens"] = calib.text_tokens;
  res.settings["calib_windows"] = calib.windows.size();

  // Progress units per layer: the calibration pass = 3 (forward + X^T X), transformations + quantization = 1.
  // (+1 for the propagation pass when propagating quantized outputs).
  Progress bar(double(c.num_layers) * (opt.propagate_quantized ? 5 : 4) + (opt.rotate ? 1 : 0), opt.progress);

  if (opt.rotate) {
    bar.advance(0, "rotating");
    fold_norms(w);
    rotate_residual(w, Hadamard(c.hidden_size));
    rotate_value_heads(w, Hadamard(c.head_dim));
    bar.advance(1, "embedding calibration windows");
  }
  const std::unique_ptr<CalibrationRunner> runner = make_runner(model, calib, opt);

  for (int li = 0; li < c.num_layers; ++li)
    res.layers.push_back(
        quantize_layer(model, *runner, li, li, c.num_layers, w.layers[size_t(li)], opt, bar, res.linears));
  bar.finish();
  finish_settings(res, opt);
  res.seconds = since(t_start);
  return res;
}

void finish_settings(QoqResult& res, const QoqOptions& opt) {
  if (opt.smooth_down && opt.smooth_down_search) {
    nlohmann::json per_layer = nlohmann::json::array();
    for (const auto& l : res.layers) per_layer.push_back({dec(l.down_alpha), dec(l.down_beta)});
    res.settings["smooth_down_searched"] = per_layer;  // [alpha, beta] per layer
  }
  if (opt.smooth_attn && opt.smooth_attn_search) {
    nlohmann::json per_layer = nlohmann::json::array();
    for (const auto& l : res.layers) {
      nlohmann::json heads = nlohmann::json::array();
      for (float a : l.attn_alpha) heads.push_back(dec(a));
      per_layer.push_back(heads);
    }
    res.settings["smooth_attention_searched"] = per_layer;  // per layer: alpha per KV head
  }
}

FpTensors fp_tensors_of(const model::Model& model) {
  const auto& c = model.config();
  auto& m = const_cast<model::Model&>(model);
  const auto& w = model.weights();
  FpTensors fp;
  fp.embed = w.embed_tokens;
  fp.final_norm = w.final_norm;
  fp.lm_head = fp_linear(m, "lm_head").weight();
  for (int i = 0; i < c.num_layers; ++i) {
    fp.input_norm.push_back(w.layers[size_t(i)].input_norm);
    fp.post_norm.push_back(w.layers[size_t(i)].post_attn_norm);
    for (const char* n : model::kLayerLinearNames) {
      const std::string name = "model.layers." + std::to_string(i) + "." + n;
      const auto& lin = fp_linear(m, name);
      if (lin.has_bias()) fp.biases[name] = lin.bias();
    }
  }
  return fp;
}

QuantizedCheckpointWriter make_checkpoint(const FpTensors& fp, const QoqResult& result, int num_layers,
                                          const nlohmann::json& hf_config, const std::string& source_model) {
  model::CheckpointMeta meta;
  meta.variant = parse_weight_format(result.settings.at("variant").get<std::string>());
  meta.kv_bits = 4;
  meta.qoq = result.settings;
  meta.source_model = source_model;
  meta.hf_config = hf_config;
  // The checkpoint always stores lm_head.weight on its own (it is rotated/folded whenever rotation is on).
  meta.hf_config["tie_word_embeddings"] = false;
  QuantizedCheckpointWriter wr(meta);
  for (const auto& [name, q] : result.linears) {
    const auto b = fp.biases.find(name);
    const Tensor bias = b == fp.biases.end() ? Tensor() : b->second;
    std::visit([&](const auto& qw) { wr.add_linear(name, qw, bias); }, q);
  }
  QS_CHECK(result.linears.size() == size_t(7 * num_layers))
      << "QoQ result has " << result.linears.size() << " linears, expected " << 7 * num_layers;
  QS_CHECK(fp.input_norm.size() == size_t(num_layers) && fp.post_norm.size() == size_t(num_layers))
      << "QoQ checkpoint: norms of " << fp.input_norm.size() << " layers, expected " << num_layers;
  wr.add_fp16("model.embed_tokens.weight", fp.embed);
  wr.add_fp16("model.norm.weight", fp.final_norm);
  for (int i = 0; i < num_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    wr.add_fp16(p + "input_layernorm.weight", fp.input_norm[size_t(i)]);
    wr.add_fp16(p + "post_attention_layernorm.weight", fp.post_norm[size_t(i)]);
  }
  wr.add_fp16("lm_head.weight", fp.lm_head);
  return wr;
}

QuantizedCheckpointWriter make_checkpoint(const model::Model& model, const QoqResult& result,
                                          const nlohmann::json& hf_config, const std::string& source_model) {
  return make_checkpoint(fp_tensors_of(model), result, model.config().num_layers, hf_config, source_model);
}

std::string format_report(const QoqResult& r) {
  std::ostringstream os;
  char buf[256];
  os << "per-layer quantization error (relative output error ||X (W - Wq)^T|| / ||X W^T|| on calibration rows)\n";
  std::snprintf(buf, sizeof buf, "%-34s %6s %6s %10s %9s\n", "linear", "N", "K", "rel.err", "mean clip");
  os << buf;
  double worst = 0.0;
  std::string worst_name;
  for (const auto& l : r.layers) {
    for (const auto& lr : l.linears) {
      std::snprintf(buf, sizeof buf, "%-34s %6lld %6lld %10.5f %9.3f\n", lr.name.c_str(), (long long)lr.n,
                    (long long)lr.k, lr.rel_error, lr.mean_clip);
      os << buf;
      if (lr.rel_error > worst) {
        worst = lr.rel_error;
        worst_name = lr.name;
      }
    }
    std::snprintf(buf, sizeof buf, "  layer %d: %.1f s, down_proj smoothing alpha %.2f beta %.2f\n", l.layer,
                  l.seconds, l.down_alpha, l.down_beta);
    os << buf;
    if (!l.attn_alpha.empty()) {
      os << "  layer " << l.layer << ": SmoothAttention alpha per KV head [";
      for (size_t g = 0; g < l.attn_alpha.size(); ++g) {
        std::snprintf(buf, sizeof buf, "%s%.2f", g ? " " : "", l.attn_alpha[g]);
        os << buf;
      }
      os << "]";
      if (l.attn_err >= 0) {
        std::snprintf(buf, sizeof buf,
                      ", KV4 attention rel.err %.5f (alpha 0.5: %.5f, none: %.5f; K only %.5f, V only %.5f, V "
                      "with per-channel smoothing probe %.5f)",
                      l.attn_err, l.attn_err_half, l.attn_err_none, l.attn_err_k, l.attn_err_v, l.attn_err_v_smooth);
        os << buf;
      }
      os << "\n";
    }
  }
  std::snprintf(buf, sizeof buf, "worst: %s (%.5f); total %s\n", worst_name.c_str(), worst,
                format_duration(r.seconds).c_str());
  os << buf;
  return os.str();
}

}  // namespace qs::quant::qoq
