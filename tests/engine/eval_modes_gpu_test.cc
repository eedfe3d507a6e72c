// The GPU runner's evaluation modes (the rows of ACCURACY.md that `qserve ppl --device cuda` runs) against the
// exact CPU reference executor, through the evaluation code ppl uses (quant/eval/perplexity.h, serving KV rule),
// on qs-llama-tiny, one WikiText-2 window of 2048 tokens, against the FP reference (FP16 on the GPU, FP32 on the
// CPU):
//  * W8A8 RTN in memory (INT8 weights through the INT8 GEMM, per-token INT8 activations, FP16 / FP32 KV),
//  * W4A16 g128 RTN (the GPU runs FP16 GEMMs over the weights dequantized to FP16; the CPU FP32 over the same
//    dequantized values),
//  * FP weights over a KV4 cache (KV4 alone), under the serving rule (where it equals the FP16 model: the KV4 cache
//    is never read by a single-prefill window) and the fake-quantized protocol (GPU read-back of the KV4 cache);
// decode steps of these modes as CUDA graphs == eager; then the device scoring (NLL / KL / top-1 on the GPU, the
// reference's logits kept there) against the host scoring of the same executors' logits, and the refusals of modes
// that make no sense.
// Tolerances: the FP16 model is within 1e-3 of the FP32 perplexity (cuda_executor_gpu_test, 2e-3 logits error);
// the quantized / KV4 modes add rounding at near-ties of INT8 / KV4 codes, amplified by FP16-vs-FP32 differences
// upstream, so 5e-3 (issue 8's bound for the W4A8KV4 checkpoints; measured values are printed). KL and top-1 are
// against a different reference on each side (FP16 vs FP32), so they are compared loosely (KL within 20% + 2e-3,
// top-1 within 0.02). Device vs host scoring runs each window twice on the same executors: the forward is
// deterministic up to the order of floating-point reductions, and the scores differ by < 1e-9 per row
// (logit_scores_gpu_test), so sums agree to 1e-6 relative and top-1 counts within 2 of 2047.
#include <gtest/gtest.h>

#include "common/test_util.h"

#if defined(QSERVE_HAVE_CUDA)
#include <cmath>
#include <cstdio>
#include <fstream>

#include "engine/cuda/cuda_executor.h"
#include "model/ref/ref_executor.h"
#include "quant/eval/perplexity.h"
#include "quant/eval/rtn_model.h"
#include "tokenizer/tokenizer.h"

namespace qs {
namespace {

using engine::CudaExecutor;
using engine::CudaExecutorOptions;
using engine::EngineDType;
namespace ev = quant::eval;

const char* kTiny = "models/qs-llama-tiny";
constexpr int64_t kL = 2048;

CudaExecutorOptions window_options(EngineDType d, const std::string& kv_cache, int keep_rows = 0) {
  CudaExecutorOptions o;
  o.dtype = d;
  o.kv_cache = kv_cache;
  o.max_batch_tokens = int32_t(kL);
  o.max_batch_seqs = 1;
  o.max_context = int32_t(kL);
  o.max_num_pages = kL / 64;
  o.cuda_graphs = false;
  o.verbose = false;
  o.keep_logits_rows = keep_rows;
  return o;
}

std::vector<int32_t> wikitext_tokens() {
  std::ifstream f(test::data_path("text/wikitext2_test.txt"), std::ios::binary);
  std::string text(60000, '\0');
  f.read(text.data(), std::streamsize(text.size()));
  text.resize(size_t(f.gcount()));
  return ev::tokenize_dataset(tokenizer::Tokenizer::from_dir(test::data_path(kTiny)), text);
}

struct Mode {
  std::string name;
  std::unique_ptr<model::Model> model;
  std::unique_ptr<CudaExecutor> gpu;
  std::unique_ptr<model::RefExecutor> cpu;
};

std::unique_ptr<model::Model> tiny() { return model::Model::load(test::data_path(kTiny)); }

TEST(EvalModes, GpuModesMatchTheCpuReferenceAndDeviceScoresMatchHostScores) {
  QS_REQUIRE_GPU();
  QS_REQUIRE_DATA(kTiny);
  QS_REQUIRE_DATA("text/wikitext2_test.txt");
  const std::vector<int32_t> ids = wikitext_tokens();
  ASSERT_GE(int64_t(ids.size()), kL + 16);

  std::vector<Mode> modes;
  auto add = [&](const std::string& name, std::unique_ptr<model::Model> m, EngineDType d, const std::string& kv_gpu,
                 KvDType kv_cpu) {
    Mode md;
    md.name = name;
    md.model = std::move(m);
    md.gpu = std::make_unique<CudaExecutor>(*md.model, window_options(d, kv_gpu));
    md.cpu = std::make_unique<model::RefExecutor>(*md.model, ev::window_executor_options(kv_cpu, kL));
    modes.push_back(std::move(md));
  };
  {
    auto m = tiny();
    ev::apply_rtn(*m, ev::RtnScheme::kW8A8);
    add("w8a8 rtn", std::move(m), EngineDType::kW4A8KV4, "fp16", KvDType::kFp32);
  }
  {
    auto m = tiny();
    ev::apply_rtn(*m, ev::RtnScheme::kW4A16G128);
    add("w4a16 g128 rtn", std::move(m), EngineDType::kFp16, "", KvDType::kFp32);
  }
  add("fp kv4", tiny(), EngineDType::kFp16, "kv4", KvDType::kKv4);
  EXPECT_NE(modes[0].gpu->name().find("w8a8kv16"), std::string::npos) << modes[0].gpu->name();
  EXPECT_NE(modes[1].gpu->name().find("dequantized"), std::string::npos) << modes[1].gpu->name();
  EXPECT_EQ(modes[2].gpu->pool().dtype, KvDType::kKv4);

  auto ref_model = tiny();
  CudaExecutor ref_gpu(*ref_model, window_options(EngineDType::kFp16, "", int(kL)));
  model::RefExecutor ref_cpu(*ref_model, ev::window_executor_options(KvDType::kFp32, kL));

  ev::EvalOptions opt;
  opt.seq_len = kL;
  opt.max_windows = 1;
  opt.quantized_self_kv = false;  // the serving rule (the GPU's)
  std::vector<ev::EvalModel> gpu_models, cpu_models;
  for (auto& md : modes) {
    gpu_models.push_back({md.name, md.gpu.get()});
    cpu_models.push_back({md.name, md.cpu.get()});
  }
  const ev::EvalModel ref_g{"fp16", &ref_gpu}, ref_c{"fp32", &ref_cpu};
  const auto on_device = ev::evaluate(ids, gpu_models, &ref_g, opt);
  opt.device_scores = false;
  const auto on_host = ev::evaluate(ids, gpu_models, &ref_g, opt);
  const auto cpu = ev::evaluate(ids, cpu_models, &ref_c, opt);
  ASSERT_EQ(on_device.size(), modes.size() + 1);
  for (size_t i = 0; i < on_device.size(); ++i) {
    const auto &d = on_device[i], &h = on_host[i], &c = cpu[i];
    std::printf("%-16s ppl GPU %.4f (host-scored %.4f) CPU %.4f (%+.3f%%)  KL GPU %.5f CPU %.5f  top-1 GPU %.4f CPU "
                "%.4f\n",
                d.label.c_str(), d.ppl, h.ppl, c.ppl, 100.0 * (d.ppl / c.ppl - 1.0), d.kl_mean, c.kl_mean, d.top1,
                c.top1);
    const bool is_ref = i + 1 == on_device.size();
    EXPECT_LE(std::abs(d.ppl / c.ppl - 1.0), is_ref ? 1e-3 : 5e-3) << d.label;
    // Device vs host scoring of the same executors.
    EXPECT_EQ(d.tokens, kL - 1);
    EXPECT_NEAR(d.nll_sum, h.nll_sum, 1e-6 * std::abs(h.nll_sum)) << d.label;
    if (!is_ref) {
      EXPECT_NEAR(d.kl_sum, h.kl_sum, 1e-6 * h.kl_sum + 1e-6) << d.label;
      EXPECT_LE(std::abs(d.top1_agree - h.top1_agree), 2) << d.label;
      if (i != 2) EXPECT_GT(d.kl_mean, 0.0) << d.label;  // a quantized model is not the reference
      EXPECT_NEAR(d.kl_mean, c.kl_mean, 0.2 * c.kl_mean + 2e-3) << d.label;
      EXPECT_NEAR(d.top1, c.top1, 0.02) << d.label;
    }
  }
  // Serving rule with one prefill per window: the window attends to its own K/V unquantized, so the KV4 cache is
  // written but never read and the KV4 model is the FP16 model (up to the prefill kernel's instance for the pool
  // type; bounds far tighter than what reading KV4 costs: KL ~0.03, top-1 ~0.87 on this model).
  EXPECT_NEAR(on_device[2].nll_sum, on_device[3].nll_sum, 1e-4 * on_device[3].nll_sum);
  EXPECT_GE(on_device[2].top1, 0.99);
  EXPECT_LT(on_device[2].kl_mean, 1e-3);

  // The fake-quantized protocol (every K/V read back from the KV4 cache; the GPU reads a prefill's own K/V back,
  // kernels/kv_cache/kv_cache_readback.h) on the KV4 model, GPU vs CPU, and now the KV4 cache does cost something.
  opt.quantized_self_kv = true;
  opt.device_scores = true;
  const auto fq_gpu = ev::evaluate(ids, {gpu_models[2]}, &ref_g, opt);
  const auto fq_cpu = ev::evaluate(ids, {cpu_models[2]}, &ref_c, opt);
  std::printf("fp kv4 fake-quant ppl GPU %.4f CPU %.4f (%+.3f%%)  KL GPU %.5f CPU %.5f  top-1 GPU %.4f CPU %.4f\n",
              fq_gpu[0].ppl, fq_cpu[0].ppl, 100.0 * (fq_gpu[0].ppl / fq_cpu[0].ppl - 1.0), fq_gpu[0].kl_mean,
              fq_cpu[0].kl_mean, fq_gpu[0].top1, fq_cpu[0].top1);
  EXPECT_LE(std::abs(fq_gpu[0].ppl / fq_cpu[0].ppl - 1.0), 5e-3);
  EXPECT_NEAR(fq_gpu[0].kl_mean, fq_cpu[0].kl_mean, 0.2 * fq_cpu[0].kl_mean + 2e-3);
  EXPECT_GT(fq_gpu[0].kl_mean, 1e-3);  // KV4 alone on the CPU: KL ~0.03 on this model (ACCURACY.md)
  EXPECT_GT(fq_gpu[0].ppl, on_device[2].ppl);
}

// Decode steps of the new modes as CUDA graphs (the first step of a bucket eager, then captured and replayed while
// the contexts grow) == the same steps eager: greedy tokens equal, logits within 2e-3 (two GPU runs that differ only
// in graph vs eager, cuda_executor_gpu_test's bound).
void graphs_equal_eager(model::Model& m, EngineDType d, const std::string& kv_cache) {
  SCOPED_TRACE(std::string(engine_dtype_name(d)) + " kv_cache '" + kv_cache + "'");
  auto opts = [&](bool graphs) {
    CudaExecutorOptions o = window_options(d, kv_cache);
    o.max_batch_tokens = 512;
    o.max_batch_seqs = 4;
    o.max_context = 512;
    o.max_num_pages = 24;
    o.cuda_graphs = graphs;
    return o;
  };
  CudaExecutor g(m, opts(true)), e(m, opts(false));
  const std::vector<int> lens = {37, 64, 5};
  std::vector<std::vector<int32_t>> pages(3);
  for (int s = 0; s < 3; ++s)
    for (int p = 0; p < 8; ++p) pages[size_t(s)].push_back(s * 8 + p);
  model::ForwardBatch pre;
  std::vector<std::vector<int32_t>> prompts;
  for (int s = 0; s < 3; ++s) {
    std::vector<int32_t> ids;
    for (int t = 0; t < lens[size_t(s)]; ++t) ids.push_back(int32_t((t * 37 + s * 101 + 11) % 8000));
    prompts.push_back(ids);
  }
  for (int s = 0; s < 3; ++s) pre.add_sequence(prompts[size_t(s)].data(), lens[size_t(s)], 0, pages[size_t(s)]);
  auto rg = g.execute(pre), re = e.execute(pre);
  std::vector<int> ctx = lens;
  for (int step = 0; step < 6; ++step) {
    for (int s = 0; s < 3; ++s) EXPECT_EQ(rg.tokens[size_t(s)], re.tokens[size_t(s)]) << "step " << step << " seq " << s;
    model::ForwardBatch dec;
    dec.return_logits = true;
    for (int s = 0; s < 3; ++s) dec.add_sequence(&re.tokens[size_t(s)], 1, ctx[size_t(s)]++, pages[size_t(s)]);
    rg = g.execute(dec);
    re = e.execute(dec);
    const int64_t V = re.logits.dim(1);
    for (int s = 0; s < 3; ++s)
      EXPECT_LE(test::normalized_error(rg.logits.data<float>() + s * V, re.logits.data<float>() + s * V, size_t(V)),
                2e-3)
          << "step " << step << " seq " << s;
  }
  EXPECT_GE(g.num_graphs(), 1);
  EXPECT_EQ(e.num_graphs(), 0);
}

TEST(EvalModes, DecodeGraphsEqualEagerInTheNewModes) {
  QS_REQUIRE_GPU();
  QS_REQUIRE_DATA(kTiny);
  auto w8 = tiny();
  ev::apply_rtn(*w8, ev::RtnScheme::kW8A8);
  graphs_equal_eager(*w8, EngineDType::kW4A8KV4, "fp16");
  graphs_equal_eager(*w8, EngineDType::kW4A8KV4, "");  // W8A8 over KV4
  auto w16 = tiny();
  ev::apply_rtn(*w16, ev::RtnScheme::kW4A16PerChannel);
  graphs_equal_eager(*w16, EngineDType::kFp16, "");
  auto fp = tiny();
  graphs_equal_eager(*fp, EngineDType::kFp16, "kv4");
}

TEST(EvalModes, NonsenseModesAndBadScoringCallsAreClearErrors) {
  QS_REQUIRE_GPU();
  QS_REQUIRE_DATA(kTiny);
  auto fp = tiny();
  auto w16 = tiny();
  ev::apply_rtn(*w16, ev::RtnScheme::kW4A16G128);
  auto w8 = tiny();
  ev::apply_rtn(*w8, ev::RtnScheme::kW8A8);
  auto err = [](auto&& fn) { return test::error_of(fn); };
  EXPECT_NE(err([&] { CudaExecutor(*w16, window_options(EngineDType::kW4A8KV4, "")); }).find("weight-only"),
            std::string::npos);
  EXPECT_NE(err([&] { CudaExecutor(*w8, window_options(EngineDType::kFp8, "")); }).find("fp8"), std::string::npos);
  EXPECT_NE(err([&] { CudaExecutor(*fp, window_options(EngineDType::kFp8, "kv4")); }).find("KV4"),
            std::string::npos);
  EXPECT_NE(err([&] { CudaExecutor(*fp, window_options(EngineDType::kFp16, "kv8")); }).find("kv_cache"),
            std::string::npos);

  CudaExecutor a(*fp, window_options(EngineDType::kFp16, "", 64));
  CudaExecutor b(*fp, window_options(EngineDType::kFp16, ""));
  std::vector<int32_t> ids(100, 7);
  model::ForwardBatch win;
  win.add_sequence(ids.data(), 100, 0, {0, 1}, false);
  win.all_logits = true;
  const std::vector<int32_t> labels(99, 3);
  EXPECT_NE(err([&] { a.score_window(win, labels, nullptr, true); }).find("keep_logits_rows"), std::string::npos);
  model::ForwardBatch sampled;
  sampled.add_sequence(ids.data(), 50, 0, {0});
  EXPECT_NE(err([&] { b.score_window(sampled, labels, nullptr, false); }).find("all_logits"), std::string::npos);
  EXPECT_NE(err([&] { b.score_window(win, std::vector<int32_t>(99, 9000), nullptr, false); }).find("label"),
            std::string::npos);
  model::ForwardBatch small;
  small.add_sequence(ids.data(), 60, 0, {0}, false);
  small.all_logits = true;
  const std::vector<int32_t> l59(59, 3);
  const auto s = a.score_window(small, l59, nullptr, true);  // keeps 60 rows
  ASSERT_EQ(s.nll.size(), 59u);
  const model::KeptLogits k = a.kept_logits();
  ASSERT_NE(k.data, nullptr);
  EXPECT_EQ(k.rows, 60);
  EXPECT_NE(err([&] { a.score_window(small, l59, &k, false); }).find("its own"), std::string::npos);
  EXPECT_NE(err([&] { b.score_window(win, labels, &k, false); }).find("do not cover"), std::string::npos);
  const auto t = b.score_window(small, l59, &k, false);  // the same FP16 model: KL 0, top-1 all agree
  ASSERT_EQ(t.kl.size(), 59u);
  for (size_t r = 0; r < 59; ++r) {
    EXPECT_NEAR(t.nll[r], s.nll[r], 1e-6 * std::abs(s.nll[r])) << r;
    EXPECT_NEAR(t.kl[r], 0.0, 1e-9) << r;
    EXPECT_EQ(t.top1[r], 1) << r;
  }
}

}  // namespace
}  // namespace qs

#else
TEST(EvalModes, NeedsACudaBuild) { GTEST_SKIP() << "built without CUDA"; }
#endif
