// SmoothAttention strength search (quant/qoq/smooth_attention_search.h):
//  * the captured attention sample is the model's own attention: the FP attention of the captured post-RoPE
//    queries over the captured keys/values reproduces the o_proj input of a full forward pass (1e-5), and the
//    search's KV4 round trip is the KV cache's (KV4 cache + the backend's attention, 1e-5);
//  * on a synthetic layer with an injected key outlier channel (the outlier_variant.py construction: k x f, q / f
//    on a rotate-half pair, same function in FP) the search picks alpha > 0 and cuts the KV4 attention error by
//    a clear factor against no smoothing; the chosen error is <= the fixed-0.5 one (by construction);
//  * on qs-llama-tiny through run_qoq: the chosen scales keep the rotate-half pairing and the GQA sharing (read back
//    from the q/k weights), the FP function is unchanged (1e-5), and the per-layer alphas are in the metadata.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "common/test_util.h"
#include "backends/ref_cpu/ops.h"
#include "model/kv_cache.h"
#include "quant/qoq/model_view.h"
#include "quant/qoq/pipeline.h"
#include "quant/qoq/smooth_attention_search.h"
#include "quant/qoq/transforms.h"

namespace qs::quant::qoq {
namespace {

using ::testing::HasSubstr;
constexpr const char* kModel = "models/qs-llama-tiny";
constexpr const char* kCalib = "text/calibration.txt";

double sum(const std::vector<double>& v) {
  double s = 0.0;
  for (double x : v) s += x;
  return s;
}

// GQA 3 (6 query heads, 2 KV heads), head_dim 64, awkward lengths.
io::ModelConfig synth_config() {
  io::ModelConfig c;
  c.hidden_size = 384;
  c.num_heads = 6;
  c.num_kv_heads = 2;
  c.head_dim = 64;
  c.num_layers = 1;
  c.intermediate_size = 128;
  c.vocab_size = 32;
  return c;
}

// Random post-RoPE Q/K/V with a per-channel key bias (as real keys have); KV head 0 gets key outlier channels on
// rotate-half pairs: k x f and q / f, so q . k (the FP attention) is unchanged.
AttentionSample synth_sample(const io::ModelConfig& c, bool outlier, uint64_t seed) {
  AttentionSample s;
  s.windows = 2;
  s.len = 67;
  for (int64_t i = 0; i < 17; ++i) s.q_pos.push_back((i * 4 + 3) % s.len);
  std::sort(s.q_pos.begin(), s.q_pos.end());
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> n01(0.0f, 1.0f);
  const int64_t d = c.head_dim, kv = c.kv_size(), qsz = c.q_size();
  std::vector<float> kbias(static_cast<size_t>(kv));
  for (auto& b : kbias) b = n01(rng);
  s.q.resize(size_t(s.windows * s.nq() * qsz));
  s.k.resize(size_t(s.windows * s.len * kv));
  s.v.resize(s.k.size());
  for (auto& x : s.q) x = 2.0f * n01(rng);
  for (size_t i = 0; i < s.k.size(); ++i) s.k[i] = n01(rng) + kbias[i % size_t(kv)];
  for (auto& x : s.v) x = n01(rng);
  if (outlier) {
    const int64_t chans[2] = {5, 17};
    const float f[2] = {64.0f, 32.0f};
    for (int o = 0; o < 2; ++o)
      for (int64_t j : {chans[o], chans[o] + d / 2}) {
        for (int64_t r = 0; r < s.windows * s.len; ++r) s.k[size_t(r * kv + j)] *= f[o];
        for (int64_t r = 0; r < s.windows * s.nq(); ++r)
          for (int h = 0; h < c.gqa_ratio(); ++h) s.q[size_t(r * qsz + h * d + j)] /= f[o];  // KV head 0's queries
      }
  }
  return s;
}

std::vector<float> key_max(const AttentionSample& s, const io::ModelConfig& c) {
  std::vector<float> m(size_t(c.kv_size()), 0.0f);
  for (size_t i = 0; i < s.k.size(); ++i)
    m[i % m.size()] = std::max(m[i % m.size()], std::fabs(s.k[i]));
  return m;
}

TEST(SmoothAttentionSearch, KeyOutlierChannelIsSmoothedAwayAndSearchBeatsFixedHalf) {
  const auto c = synth_config();
  const AttentionSample s = synth_sample(c, /*outlier=*/true, 3);
  const auto kmax = key_max(s, c);
  const auto grid = default_alpha_grid();
  ASSERT_EQ(grid.size(), 21u);
  ASSERT_EQ(grid[10], 0.5f);
  const SmoothAttentionChoice ch = search_smooth_attention(s, kmax, c, grid);
  ASSERT_EQ(ch.alpha.size(), 2u);
  const std::vector<double> none = kv4_attention_error(s, c, {});
  const std::vector<double> half = kv4_attention_error(s, c, smooth_attention_scales(kmax, c, 0.5f));
  const std::vector<double> chosen = kv4_attention_error(s, c, ch.lambda);
  // The KV head with the outliers: smoothing is chosen and helps by a clear factor.
  EXPECT_GT(ch.alpha[0], 0.0f);
  EXPECT_LT(chosen[0] * 4.0, none[0]) << "chosen " << chosen[0] << " vs none " << none[0];
  // By construction (0.5 is a grid point): never worse than the fixed exponent, head by head and in total.
  for (size_t g = 0; g < 2; ++g) EXPECT_LE(chosen[g], half[g] * (1 + 1e-12)) << "KV head " << g;
  EXPECT_LE(sum(chosen), sum(half) * (1 + 1e-12));
  // The reported error is the recomputed one, and the grid table matches direct evaluation.
  EXPECT_NEAR(ch.chosen_err, sum(chosen), 1e-9 * sum(chosen));
  EXPECT_NEAR(ch.fp_norm, sum(fp_attention_norm(s, c)), 1e-9 * ch.fp_norm);
  EXPECT_NEAR(sum(ch.err[0]), sum(none), 1e-9 * sum(none));
  EXPECT_NEAR(sum(ch.err[10]), sum(half), 1e-9 * sum(half));
  // Per-layer granularity: one alpha, total error between the per-head optimum and fixed 0.5.
  const SmoothAttentionChoice layer = search_smooth_attention(s, kmax, c, grid, /*per_head=*/false);
  EXPECT_EQ(layer.alpha[0], layer.alpha[1]);
  EXPECT_LE(ch.chosen_err, layer.chosen_err * (1 + 1e-12));
  EXPECT_LE(layer.chosen_err, sum(half) * (1 + 1e-12));
  // RoPE pairs share lambda; lambda of each head follows its own alpha.
  const int64_t d = c.head_dim;
  for (int64_t g = 0; g < 2; ++g)
    for (int64_t j = 0; j < d / 2; ++j) {
      EXPECT_EQ(ch.lambda[size_t(g * d + j)], ch.lambda[size_t(g * d + j + d / 2)]);
      const float m = std::max(kmax[size_t(g * d + j)], kmax[size_t(g * d + j + d / 2)]);
      EXPECT_FLOAT_EQ(ch.lambda[size_t(g * d + j)], std::pow(m, ch.alpha[size_t(g)]));
    }
}

TEST(SmoothAttentionSearch, ErrorIsZeroWithoutQuantizationAndPositiveWithIt) {
  const auto c = synth_config();
  const AttentionSample s = synth_sample(c, false, 4);
  const auto kmax = key_max(s, c);
  // FP keys and values with any scale: the identical computation up to the scale's rounding.
  const auto lam = smooth_attention_scales(kmax, c, 0.7f);
  const auto norm = fp_attention_norm(s, c);
  const auto fp = kv4_attention_error(s, c, lam, false, false);
  for (size_t g = 0; g < fp.size(); ++g) EXPECT_LE(fp[g], 1e-10 * norm[g]);
  const auto kq = kv4_attention_error(s, c, {}, true, false), vq = kv4_attention_error(s, c, {}, false, true);
  for (size_t g = 0; g < 2; ++g) {
    EXPECT_GT(kq[g], 1e-8 * norm[g]);
    EXPECT_GT(vq[g], 1e-8 * norm[g]);
  }
}

// The search's attention (score blocks of 16 positions and channel blocks of 16 in SIMD lanes) against the plain
// loops it replaced, written here: the FP output norm must agree to the last bit, with a length that is not a
// multiple of 16, queries at position 0, and a sliding window that starts blocks at odd positions.
// Per KV head, summed in fp_attention_norm's order (window, head, query head, query, channel).
std::vector<double> plain_fp_norm(const AttentionSample& s, const io::ModelConfig& c) {
  const int64_t d = c.head_dim, nq = s.nq(), qsz = c.q_size(), kv = c.kv_size(), r = c.gqa_ratio();
  const double scale = 1.0 / std::sqrt(double(d));
  std::vector<double> norm(size_t(c.num_kv_heads), 0.0);
  for (int64_t w = 0; w < s.windows; ++w)
    for (int64_t g = 0; g < c.num_kv_heads; ++g)
      for (int64_t hh = 0; hh < r; ++hh)
        for (int64_t i = 0; i < nq; ++i) {
          const int64_t pos = s.q_pos[size_t(i)];
          const int64_t t0 = c.sliding_window > 0 ? std::max<int64_t>(0, pos - c.sliding_window + 1) : 0;
          const float* q = s.q.data() + (w * nq + i) * qsz + (g * r + hh) * d;
          std::vector<double> p(size_t(pos + 1));
          double mx = -INFINITY, sum_e = 0.0;
          for (int64_t t = t0; t <= pos; ++t) {
            float dot = 0.0f;
            for (int64_t j = 0; j < d; ++j) dot += q[j] * s.k[size_t((w * s.len + t) * kv + g * d + j)];
            p[size_t(t)] = double(dot) * scale;
            mx = std::max(mx, p[size_t(t)]);
          }
          std::vector<double> acc(size_t(d), 0.0);
          for (int64_t t = t0; t <= pos; ++t) {
            const double e = std::exp(p[size_t(t)] - mx);
            sum_e += e;
            for (int64_t j = 0; j < d; ++j) acc[size_t(j)] += e * double(s.v[size_t((w * s.len + t) * kv + g * d + j)]);
          }
          std::vector<float> o(static_cast<size_t>(d));
          for (int64_t j = 0; j < d; ++j) o[size_t(j)] = float(acc[size_t(j)] / sum_e);
          for (float x : o) norm[size_t(g)] += double(x) * double(x);
        }
  return norm;
}

TEST(SmoothAttentionSearch, VectorizedAttentionEqualsThePlainLoopsBitForBit) {
  for (int sliding : {0, 13}) {
    auto c = synth_config();
    c.sliding_window = sliding;
    AttentionSample s = synth_sample(c, true, 9);
    s.q_pos.insert(s.q_pos.begin(), 0);
    s.q.insert(s.q.begin(), s.q.begin(), s.q.begin() + c.q_size());  // window 0 gets one more query (at 0)
    s.q.insert(s.q.begin() + (s.nq()) * c.q_size(), s.q.begin() + (s.nq()) * c.q_size(),
               s.q.begin() + (s.nq() + 1) * c.q_size());  // and window 1 too
    ASSERT_EQ(int64_t(s.q.size()), s.windows * s.nq() * c.q_size());
    EXPECT_EQ(fp_attention_norm(s, c), plain_fp_norm(s, c)) << "sliding window " << sliding;
  }
}

TEST(SmoothAttentionSearch, ProbesEqualSeparateEvaluations) {
  const auto c = synth_config();
  const AttentionSample s = synth_sample(c, true, 4);
  const auto lam = smooth_attention_scales(key_max(s, c), c, 0.6f);
  const std::vector<float> vs(size_t(c.kv_size()), 1.5f);
  const auto all = kv4_attention_errors(s, c, {{lam, true, false, {}}, {lam, false, true, vs}, {{}, true, true, {}}});
  ASSERT_EQ(all.size(), 3u);
  EXPECT_EQ(all[0], kv4_attention_error(s, c, lam, true, false));
  EXPECT_EQ(all[1], kv4_attention_error(s, c, lam, false, true, vs));
  EXPECT_EQ(all[2], kv4_attention_error(s, c, {}, true, true));
  EXPECT_GT(sum(all[2]), 0.0);
}

TEST(SmoothAttentionSearch, BadInputIsAClearError) {
  const auto c = synth_config();
  AttentionSample s = synth_sample(c, false, 5);
  const auto kmax = key_max(s, c);
  EXPECT_THAT(qs::test::error_of([&] { search_smooth_attention(s, kmax, c, {}); }), HasSubstr("empty alpha grid"));
  EXPECT_THAT(qs::test::error_of([&] { smooth_attention_scales(kmax, c, std::vector<float>{0.5f}); }),
              HasSubstr("one per KV head"));
  EXPECT_THAT(qs::test::error_of([&] { smooth_attention_scales(kmax, c, std::vector<float>{0.5f, 1.5f}); }),
              HasSubstr("outside [0, 1]"));
  s.k.pop_back();
  EXPECT_THAT(qs::test::error_of([&] { kv4_attention_error(s, c, {}); }), HasSubstr("do not match"));
  AttentionSample empty;
  EXPECT_THAT(qs::test::error_of([&] { search_smooth_attention(empty, kmax, c, default_alpha_grid()); }),
              HasSubstr("empty attention sample"));
}

// The captured sample is the model's attention, and the KV4 error uses the cache's KV4 round trip.
TEST(SmoothAttentionSearch, CapturedSampleReproducesTheModelsAttention) {
  QS_REQUIRE_DATA(kModel);
  QS_REQUIRE_DATA(kCalib);
  auto model = model::Model::load(qs::test::data_path(kModel));
  const auto tok = tokenizer::Tokenizer::from_dir(qs::test::data_path(kModel));
  const auto set = sample_calibration_file(tok, qs::test::data_path(kCalib), 3, 57, 2);
  const auto& c = model->config();
  const int layer = 1;
  // Reference: the o_proj input (= attention output) of layer 1 in full forward passes, window by window.
  std::vector<std::vector<float>> attn_out;
  const std::string oname = "model.layers." + std::to_string(layer) + ".self_attn.o_proj";
  model->set_observer([&](const std::string& n, const float* x, int64_t m, int64_t k) {
    if (n == oname) attn_out.emplace_back(x, x + m * k);
  });
  for (const auto& w : set.windows) {
    auto cache = model->new_cache();
    model->forward({{w.data(), int64_t(w.size()), &cache}}, model::LogitsMode::kNone);
  }
  model->set_observer({});
  ASSERT_EQ(attn_out.size(), 3u);

  LayerRunner runner(*model, set, /*windows_per_call=*/2);
  for (int l = 0; l < layer; ++l) runner.run(l, {.absmax = false, .keys = false}, true);
  CaptureOptions opt;
  opt.attn_windows = 2;
  opt.attn_queries = 13;
  const LayerCapture cap = runner.run(layer, opt, false);
  const AttentionSample& s = cap.attn;
  ASSERT_EQ(s.windows, 2);
  ASSERT_EQ(s.nq(), 13);
  EXPECT_EQ(s.q_pos.front(), 2);   // (2i+1) * 57 / 26
  EXPECT_EQ(s.q_pos.back(), 54);
  const auto& be = model->backend();
  const int64_t qsz = c.q_size(), kv = c.kv_size();
  for (int64_t w = 0; w < 2; ++w) {
    const int64_t win = w * 3 / 2;  // windows 0 and 1 of 3 (evenly spaced)
    // FP: the captured post-RoPE q at position p over the captured k/v = the forward pass's attention output.
    std::vector<float> out(static_cast<size_t>(qsz)), ref, got;
    for (int64_t i = 0; i < s.nq(); ++i) {
      const int64_t p = s.q_pos[size_t(i)];
      backends::AttentionArgs a;
      a.q = s.q.data() + (w * s.nq() + i) * qsz;
      a.k = s.k.data() + w * s.len * kv;
      a.v = s.v.data() + w * s.len * kv;
      a.out = out.data();
      a.m = 1;
      a.kv_len = p + 1;
      a.q_pos0 = p;
      a.num_heads = c.num_heads;
      a.num_kv_heads = c.num_kv_heads;
      a.head_dim = c.head_dim;
      a.scale = 1.0 / std::sqrt(double(c.head_dim));
      be.attention(a);
      got.insert(got.end(), out.begin(), out.end());
      ref.insert(ref.end(), attn_out[size_t(win)].begin() + p * qsz, attn_out[size_t(win)].begin() + (p + 1) * qsz);
    }
    EXPECT_LE(qs::test::normalized_error(got, ref), 1e-5) << "window " << w;
  }
  // KV4: the error of the search's KV4 path (no smoothing) equals the error of the backend's attention over a
  // KV4 cache holding the same keys and values.
  double cache_err = 0.0;
  for (int64_t w = 0; w < 2; ++w) {
    model::KvCache kv4(c, model::KvMode::kKv4), fp(c);
    kv4.write(layer, 0, s.k.data() + w * s.len * kv, s.v.data() + w * s.len * kv, s.len);
    fp.write(layer, 0, s.k.data() + w * s.len * kv, s.v.data() + w * s.len * kv, s.len);
    std::vector<float> oq(static_cast<size_t>(qsz)), of(static_cast<size_t>(qsz));
    for (int64_t i = 0; i < s.nq(); ++i) {
      const int64_t p = s.q_pos[size_t(i)];
      backends::AttentionArgs a;
      a.q = s.q.data() + (w * s.nq() + i) * qsz;
      a.m = 1;
      a.kv_len = p + 1;
      a.q_pos0 = p;
      a.num_heads = c.num_heads;
      a.num_kv_heads = c.num_kv_heads;
      a.head_dim = c.head_dim;
      a.scale = 1.0 / std::sqrt(double(c.head_dim));
      a.k = kv4.k(layer), a.v = kv4.v(layer), a.out = oq.data();
      be.attention(a);
      a.k = fp.k(layer), a.v = fp.v(layer), a.out = of.data();
      be.attention(a);
      for (int64_t j = 0; j < qsz; ++j) cache_err += (double(oq[size_t(j)]) - of[size_t(j)]) * (double(oq[size_t(j)]) - of[size_t(j)]);
    }
  }
  const double search_err = sum(kv4_attention_error(s, c, {}));
  ASSERT_GT(cache_err, 0.0);
  EXPECT_NEAR(search_err, cache_err, 1e-4 * cache_err);
}

// Through the pipeline on the real model: searched SmoothAttention only (rotation on, other steps off).
TEST(SmoothAttentionSearch, PipelineScalesKeepPairsAndGqaAndTheFunction) {
  QS_REQUIRE_DATA(kModel);
  QS_REQUIRE_DATA(kCalib);
  auto model = model::Model::load(qs::test::data_path(kModel));
  const auto tok = tokenizer::Tokenizer::from_dir(qs::test::data_path(kModel));
  const auto calib = sample_calibration_file(tok, qs::test::data_path(kCalib), 3, 80, 0);
  const auto& c = model->config();
  std::mt19937_64 rng(9);
  std::vector<int32_t> ids(45);
  for (auto& t : ids) t = int32_t(rng() % uint64_t(c.vocab_size));
  auto logits = [&] {
    auto cache = model->new_cache();
    Tensor t = model->forward({{ids.data(), int64_t(ids.size()), &cache}}, model::LogitsMode::kAll);
    return std::vector<float>(t.data<float>(), t.data<float>() + t.numel());
  };
  const std::vector<float> ref = logits();
  // The rotated-but-unsmoothed q/k weights, to read lambda back as the ratio of the smoothed ones.
  auto rotated = model::Model::load(qs::test::data_path(kModel));
  {
    ModelWeights w = weights_view(*rotated);
    fold_norms(w);
    rotate_residual(w, Hadamard(c.hidden_size));
    rotate_value_heads(w, Hadamard(c.head_dim));
  }
  QoqOptions opt = QoqOptions::rtn(WeightFormat::kW4A8G128);
  opt.rotate = true;
  opt.smooth_attn = true;
  opt.sample_rows = 16;
  opt.smooth_attn_windows = 2;
  opt.smooth_attn_queries = 24;
  opt.propagate_quantized = false;
  opt.progress = false;
  const QoqResult res = run_qoq(*model, calib, opt);
  EXPECT_LE(qs::test::normalized_error(logits(), ref), 1e-5);  // smoothing (and rotation) keep the function

  ASSERT_TRUE(res.settings.at("smooth_attention_search").get<bool>());
  EXPECT_FALSE(res.settings.contains("smooth_attention_alpha"));
  const auto& searched = res.settings.at("smooth_attention_searched");
  ASSERT_EQ(int(searched.size()), c.num_layers);
  ModelWeights after = weights_view(*model), before = weights_view(*rotated);
  const int64_t d = c.head_dim, hid = c.hidden_size;
  for (int l = 0; l < c.num_layers; ++l) {
    ASSERT_EQ(int(searched[size_t(l)].size()), c.num_kv_heads);
    const auto& rep = res.layers[size_t(l)];
    EXPECT_LE(rep.attn_err, rep.attn_err_half * (1 + 1e-9)) << "layer " << l;
    for (int g = 0; g < c.num_kv_heads; ++g) {
      const float a = searched[size_t(l)][size_t(g)].get<float>();
      EXPECT_GE(a, 0.0f);
      EXPECT_LE(a, 1.0f);
    }
    const float* k0 = before.layers[size_t(l)].k->data<float>();
    const float* k1 = after.layers[size_t(l)].k->data<float>();
    const float* q0 = before.layers[size_t(l)].q->data<float>();
    const float* q1 = after.layers[size_t(l)].q->data<float>();
    for (int64_t r = 0; r < c.kv_size(); ++r) {
      const float lambda = k0[r * hid + 3] / k1[r * hid + 3];  // k rows divided by lambda
      const int64_t g = r / d, j = r % d, partner = g * d + (j + d / 2) % d;
      const float lp = k0[partner * hid + 3] / k1[partner * hid + 3];
      EXPECT_NEAR(lambda, lp, 1e-5f * lambda) << "layer " << l << " row " << r << ": RoPE pair scales differ";
      for (int hh = 0; hh < c.gqa_ratio(); ++hh) {  // every query head of the group: q rows times lambda
        const int64_t qr = (g * c.gqa_ratio() + hh) * d + j;
        EXPECT_NEAR(q1[qr * hid + 7] / q0[qr * hid + 7], lambda, 1e-4f * lambda)
            << "layer " << l << " query head " << g * c.gqa_ratio() + hh << " channel " << j;
      }
    }
  }
}

}  // namespace
}  // namespace qs::quant::qoq
