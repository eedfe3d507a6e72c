// The GPU model runner (engine/cuda/cuda_executor.h) end to end on qs-llama-tiny:
//  * FP16 on the GPU vs the HF transformers FP32 reference logits (normalized error <= 2e-3 per prompt) and the 8
//    reference greedy generations;
//  * QoQ checkpoints (per-channel, g128; made by `qserve quantize`, directory in QSERVE_ENGINE_CKPT) vs the CPU
//    integer path (model/checkpoint/load.h Model with a KV4 cache): teacher-forced greedy agreement and logits
//    error (bounds and why they are not 99% at check_quantized_agreement);
//  * batched == one by one, a mixed prefill + decode step, chunked prefill == whole prefill, a CUDA-graph step
//    replayed after the contexts grew == an eager step, random weights in a named shape, and bad input.
// Tolerances: FP16 weights/activations over 4 layers vs FP32: 2e-3 (TESTING.md, FP16-output GPU kernels); two
// GPU runs of the same model that differ only in batching / decode split / graph: 2e-3 on the logits (FP16
// rounding of attention partials in another order); KV4 chunked vs whole prefill: the chunk's prefix is read
// quantized instead of unquantized, so the FP16-KV model carries the tight bound and the KV4 one a greedy check.
#include <gtest/gtest.h>

#include "common/test_util.h"

#if defined(QSERVE_HAVE_CUDA)
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <stdexcept>
#include <nlohmann/json.hpp>

#include "core/dtype.h"
#include "core/error.h"
#include "engine/cuda/cuda_executor.h"
#include "engine/model_shapes.h"
#include "io/safetensors.h"
#include "model/kv_cache.h"
#include "model/quantized/quantized_linear.h"
#include "model/sampling.h"
#include "model/checkpoint/load.h"
#include "quant/eval/perplexity.h"
#include "tokenizer/tokenizer.h"

namespace qs {
namespace {

using engine::CudaExecutor;
using engine::CudaExecutorOptions;
using engine::EngineDType;
using model::ForwardBatch;

const char* kTiny = "models/qs-llama-tiny";

struct Case {
  std::vector<int32_t> ids, greedy;
  std::string logits_name;
};

std::vector<Case> reference_cases() {
  const std::string path = test::data_path("fixtures/reference_generations.json");
  std::ifstream f(path);
  if (!f) throw std::runtime_error("cannot open " + path + " (set QSERVE_DATA to the shared data folder)");
  const auto j = nlohmann::json::parse(f);
  std::vector<Case> out;
  for (const auto& c : j["cases"])
    out.push_back({c["input_ids"].get<std::vector<int32_t>>(), c["greedy_ids"].get<std::vector<int32_t>>(),
                   c["logits_tensor"].get<std::string>()});
  return out;
}

CudaExecutorOptions small_options(EngineDType d, bool graphs = true) {
  CudaExecutorOptions o;
  o.dtype = d;
  o.max_batch_tokens = 1024;
  o.max_batch_seqs = 16;
  o.max_context = 512;
  o.max_num_pages = 200;
  o.cuda_graphs = graphs;
  o.verbose = false;
  return o;
}

// Sequences own fixed page ranges: sequence slot s uses pages [s * 8, s * 8 + 8) (512 tokens at 64 per page).
std::vector<int32_t> pages_of(int slot) {
  std::vector<int32_t> p;
  for (int i = 0; i < 8; ++i) p.push_back(slot * 8 + i);
  return p;
}

std::vector<float> row(const Tensor& t, int64_t r) {
  const int64_t v = t.dim(1);
  return std::vector<float>(t.data<float>() + r * v, t.data<float>() + (r + 1) * v);
}

std::string ckpt_dir(const std::string& name) {
  const char* e = std::getenv("QSERVE_ENGINE_CKPT");
  return std::string(e ? e : "/tmp/gpuq") + "/" + name;
}

bool dir_exists(const std::string& d) { return std::ifstream(d + "/config.json").good(); }

// Greedy generation on an executor: prefill the prompt in slot `slot`, then `n` decode steps one at a time.
std::vector<int32_t> generate(CudaExecutor& ex, const std::vector<int32_t>& prompt, int n, int slot = 0) {
  std::vector<int32_t> out;
  ForwardBatch b;
  b.add_sequence(prompt.data(), int32_t(prompt.size()), 0, pages_of(slot));
  int32_t tok = ex.execute(b).tokens[0];
  int ctx = int(prompt.size());
  for (int i = 0; i < n; ++i) {
    out.push_back(tok);
    if (i + 1 == n) break;
    ForwardBatch d;
    d.add_sequence(&tok, 1, ctx, pages_of(slot));
    tok = ex.execute(d).tokens[0];
    ++ctx;
  }
  return out;
}

TEST(CudaExecutor, Fp16MatchesReferenceLogitsAndGenerations) {
  QS_REQUIRE_GPU();
  QS_REQUIRE_DATA(kTiny);
  QS_REQUIRE_DATA("fixtures/reference_logits.safetensors");
  auto m = model::Model::load(test::data_path(kTiny));
  CudaExecutor ex(*m, small_options(EngineDType::kFp16));
  const auto ref = io::SafetensorsFile::open(test::data_path("fixtures/reference_logits.safetensors"));
  int exact = 0, total = 0;
  for (const Case& c : reference_cases()) {
    ForwardBatch b;
    b.add_sequence(c.ids.data(), int32_t(c.ids.size()), 0, pages_of(0));
    b.all_logits = true;
    const auto r = ex.execute(b);
    const Tensor want = ref->get(c.logits_name).to_f32();
    ASSERT_EQ(r.logits.numel(), want.numel());
    const double err = test::normalized_error(r.logits.data<float>(), want.data<float>(), size_t(want.numel()));
    EXPECT_LE(err, 2e-3) << c.logits_name;
    const auto g = generate(ex, c.ids, int(c.greedy.size()));
    for (size_t i = 0; i < g.size(); ++i) {
      if (g[i] != c.greedy[i]) break;  // count the matching prefix
      ++exact;
    }
    total += int(c.greedy.size());
    EXPECT_EQ(g, c.greedy) << c.logits_name;
  }
  std::printf("fp16 greedy: %d of %d reference tokens before the first divergence\n", exact, total);
}

struct Agreement {
  int agree = 0, total = 0;
  double err_sum = 0.0, err_max = 0.0;
};
// The agreement of the GPU and `cpu` over the reference prompts (defined after check_quantized_agreement).
Agreement measure_agreement(model::Model& cpu, CudaExecutor& ex, const std::string& name, bool kv16, bool log);

// Teacher-forced greedy agreement of the GPU with the CPU integer path over the reference prompts.
void check_quantized_agreement(const std::string& name, bool kv16 = false) {
  QS_REQUIRE_GPU();
  QS_REQUIRE_DATA("fixtures/reference_generations.json");
  const std::string dir = ckpt_dir(name);
  if (!dir_exists(dir)) GTEST_SKIP() << "no quantized checkpoint at " << dir << " (set QSERVE_ENGINE_CKPT)";
  auto loaded = model::load_checkpoint(dir, {});
  model::Model& cpu = *loaded.model;
  CudaExecutorOptions o = small_options(EngineDType::kW4A8KV4);
  if (kv16) o.kv_cache = "fp16";
  CudaExecutor ex(cpu, o);
  const Agreement a = measure_agreement(cpu, ex, name, kv16, true);
  std::printf("%s: GPU greedy agrees with the CPU integer path on %d of %d positions; logits normalized error mean "
              "%.4f max %.4f\n", name.c_str(), a.agree, a.total, a.err_sum / a.total, a.err_max);
  // Bounds (measured on H200, 2026-11-30, then rounded out; see the report of issue 8): the GPU keeps the residual
  // stream, GEMM outputs and attention in FP16 where the CPU integer path keeps FP32, so the INT8 activation and
  // KV4 roundings see inputs that differ by ~2^-11 and a few codes flip. W4A8 over an FP16 cache: logits normalized
  // error 1.2% mean, 190/192 greedy positions; with KV4 each flipped 4-bit code moves a key by 1/15 of its range:
  // 3.5-4.2% mean error, 180-183/192 positions (the disagreements are near-ties of the CPU's top two, gap < 0.4
  // logits but one). A wrong composition (a swapped buffer, a missing xsum, a wrong scale) gives errors > 20%.
  const double min_agree = kv16 ? 0.98 : 0.93, max_err = kv16 ? 0.02 : 0.05;
  EXPECT_GE(double(a.agree), min_agree * a.total) << name;
  EXPECT_LE(a.err_sum / a.total, max_err) << name;

  // Negative control (issue 13: these bounds come from measured values): one path broken must fail them. The GPU
  // (weights uploaded at construction) is compared with the CPU model whose layer-1 linears have weights 1.25x too
  // large (FP16 scales and per-channel scaled zeros x1.25), which is what a GPU path with that bug would show
  // against the correct CPU. On the CPU (tests/quant_eval/quantized_model_test.cc) this error moves the logits of
  // the same prompts by 0.31 normalized and their top-1 agreement to 0.54-0.57.
  for (const std::string& n : cpu.linear_names()) {
    if (n.rfind("model.layers.1.", 0) != 0) continue;
    auto& slot = cpu.linear_slot(n);
    const auto* ql = dynamic_cast<const model::QuantizedLinear*>(slot.get());
    ASSERT_NE(ql, nullptr) << n;
    model::QuantizedWeights w = ql->weights();
    auto times = [](Tensor& t) {  // deep copy (shared storage), then x1.25 in FP16
      t = t.clone();
      uint16_t* v = t.data<uint16_t>();
      for (int64_t i = 0; i < t.numel(); ++i) v[i] = float_to_fp16(fp16_to_float(v[i]) * 1.25f);
    };
    times(w.scale);
    if (w.szero.defined()) times(w.szero);
    slot = std::make_unique<model::QuantizedLinear>(std::move(w), ql->act_mode(), cpu.backend(), n);
  }
  const Agreement bad = measure_agreement(cpu, ex, name, kv16, false);
  std::printf("%s negative control (CPU layer 1 weights x1.25): agreement %d of %d, error mean %.4f\n", name.c_str(),
              bad.agree, bad.total, bad.err_sum / bad.total);
  EXPECT_GT(bad.err_sum / bad.total, max_err) << name << ": a 25% weight error in one layer passes the error bound";
  EXPECT_LT(double(bad.agree), min_agree * bad.total) << name << ": a 25% weight error passes the agreement bound";
}

Agreement measure_agreement(model::Model& cpu, CudaExecutor& ex, const std::string& name, bool kv16, bool log) {
  Agreement a;
  for (const Case& c : reference_cases()) {
    // CPU: prefill with the chunk's own K/V unquantized (as the prefill kernel), decode from the KV4 cache.
    model::KvCache cache = cpu.new_cache(kv16 ? model::KvMode::kFp32 : model::KvMode::kKv4);
    Tensor lg = cpu.forward({{c.ids.data(), int64_t(c.ids.size()), &cache, true}}, model::LogitsMode::kLast);
    ForwardBatch b;
    b.add_sequence(c.ids.data(), int32_t(c.ids.size()), 0, pages_of(0));
    b.return_logits = true;
    model::ForwardResult g = ex.execute(b);
    int ctx = int(c.ids.size());
    for (int i = 0; i < 24; ++i) {
      const int64_t V = lg.dim(1);
      const int32_t tok = model::argmax(lg.data<float>(), V);
      const double err = test::normalized_error(g.logits.data<float>(), lg.data<float>(), size_t(V));
      a.err_sum += err;
      a.err_max = std::max(a.err_max, err);
      if (g.tokens[0] == tok) {
        ++a.agree;
      } else if (log) {
        const float* l = lg.data<float>();
        std::printf("  %s: prompt '%s' step %d: CPU %d (logit %.4f) GPU %d (CPU logit %.4f, GPU logits %.4f / %.4f)\n",
                    name.c_str(), c.logits_name.c_str(), i, tok, l[tok], g.tokens[0], l[g.tokens[0]],
                    g.logits.data<float>()[tok], g.logits.data<float>()[g.tokens[0]]);
      }
      ++a.total;
      // Both continue from the CPU's token.
      lg = cpu.forward({{&tok, 1, &cache, false}}, model::LogitsMode::kLast);
      ForwardBatch d;
      d.add_sequence(&tok, 1, ctx, pages_of(0));
      d.return_logits = true;
      g = ex.execute(d);
      ++ctx;
    }
  }
  return a;
}

TEST(CudaExecutor, PerChannelCheckpointAgreesWithCpuIntegerPath) { check_quantized_agreement("tiny-pc"); }
TEST(CudaExecutor, G128CheckpointAgreesWithCpuIntegerPath) { check_quantized_agreement("tiny-g128"); }
// Ablation: W4A8 GEMMs over an FP16 KV cache vs the CPU integer path over an FP32 cache (isolates the KV4 part).
TEST(CudaExecutor, PerChannelKv16CheckpointAgreesWithCpuIntegerPath) { check_quantized_agreement("tiny-pc", true); }

// Loads the per-channel checkpoint when present, else skips.
std::unique_ptr<model::Model> quantized_or_skip(bool* ok) {
  const std::string dir = ckpt_dir("tiny-pc");
  *ok = dir_exists(dir);
  if (!*ok) return nullptr;
  return std::move(model::load_checkpoint(dir, {}).model);
}

// Prompts of awkward lengths built from the reference ids (1, 3, 17, 63, 64, 65, 130 tokens).
std::vector<std::vector<int32_t>> awkward_prompts() {
  std::vector<int32_t> pool;
  for (const Case& c : reference_cases()) pool.insert(pool.end(), c.ids.begin(), c.ids.end());
  for (const Case& c : reference_cases()) pool.insert(pool.end(), c.greedy.begin(), c.greedy.end());
  std::vector<std::vector<int32_t>> out;
  size_t at = 0;
  for (int n : {1, 3, 17, 63, 64, 65, 130}) {
    std::vector<int32_t> p;
    for (int i = 0; i < n; ++i) p.push_back(pool[(at + size_t(i)) % pool.size()]);
    at += size_t(n);
    out.push_back(p);
  }
  return out;
}

void batched_equals_single(EngineDType d, model::Model& m) {
  CudaExecutor ex(m, small_options(d, /*graphs=*/false));
  const auto prompts = awkward_prompts();
  // One by one.
  std::vector<std::vector<float>> single;
  for (size_t i = 0; i < prompts.size(); ++i) {
    ForwardBatch b;
    b.add_sequence(prompts[i].data(), int32_t(prompts[i].size()), 0, pages_of(int(i)));
    b.return_logits = true;
    single.push_back(row(ex.execute(b).logits, 0));
  }
  // All at once (other pages), then one mixed step: half decode, half a new prefill chunk.
  ForwardBatch all;
  all.return_logits = true;
  for (size_t i = 0; i < prompts.size(); ++i)
    all.add_sequence(prompts[i].data(), int32_t(prompts[i].size()), 0, pages_of(int(i + 8)));
  const auto r = ex.execute(all);
  for (size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_LE(test::normalized_error(row(r.logits, int64_t(i)), single[i]), 2e-3) << "prompt " << i;
    EXPECT_EQ(r.tokens[i], model::argmax(single[i].data(), int64_t(single[i].size()))) << "prompt " << i;
  }
  // Mixed step: sequences 0..3 decode one token (their sampled one) while 4..6 get a fresh prefill in new slots;
  // compared with the same work as separate steps.
  ForwardBatch mixed, dec, pre;
  mixed.return_logits = dec.return_logits = pre.return_logits = true;
  for (int i = 0; i < 7; ++i) {
    if (i < 4) {
      const int32_t t = r.tokens[size_t(i)];
      const int ctx = int(prompts[size_t(i)].size());
      mixed.add_sequence(&t, 1, ctx, pages_of(i + 8));
      dec.add_sequence(&t, 1, ctx, pages_of(i));
    } else {
      mixed.add_sequence(prompts[size_t(i)].data(), int32_t(prompts[size_t(i)].size()), 0, pages_of(i + 8));
      pre.add_sequence(prompts[size_t(i)].data(), int32_t(prompts[size_t(i)].size()), 0, pages_of(i + 16));
    }
  }
  const auto rm = ex.execute(mixed);
  const auto rd = ex.execute(dec);
  const auto rp = ex.execute(pre);
  for (int i = 0; i < 7; ++i) {
    const auto want = i < 4 ? row(rd.logits, i) : row(rp.logits, i - 4);
    EXPECT_LE(test::normalized_error(row(rm.logits, i), want), 2e-3) << "mixed step, sequence " << i;
  }
}

TEST(CudaExecutor, BatchedEqualsSingleFp16) {
  QS_REQUIRE_GPU();
  QS_REQUIRE_DATA(kTiny);
  auto m = model::Model::load(test::data_path(kTiny));
  batched_equals_single(EngineDType::kFp16, *m);
}

TEST(CudaExecutor, BatchedEqualsSingleW4A8KV4) {
  QS_REQUIRE_GPU();
  QS_REQUIRE_DATA("fixtures/reference_generations.json");
  bool ok = false;
  auto m = quantized_or_skip(&ok);
  if (!ok) GTEST_SKIP() << "no quantized checkpoint (set QSERVE_ENGINE_CKPT)";
  batched_equals_single(EngineDType::kW4A8KV4, *m);
}

// Chunked prefill (chunks of 64, 50, 16 tokens, each reading the earlier ones from the cache) == whole prefill.
void chunked_equals_whole(EngineDType d, model::Model& m, double tol) {
  CudaExecutor ex(m, small_options(d, false));
  const auto prompt = awkward_prompts().back();  // 130 tokens
  ForwardBatch whole;
  whole.add_sequence(prompt.data(), 130, 0, pages_of(0));
  whole.return_logits = true;
  const auto rw = ex.execute(whole);
  int at = 0;
  model::ForwardResult rc;
  for (int n : {64, 50, 16}) {
    ForwardBatch c;
    c.add_sequence(prompt.data() + at, n, at, pages_of(1));
    c.return_logits = true;
    rc = ex.execute(c);
    at += n;
  }
  EXPECT_LE(test::normalized_error(row(rc.logits, 0), row(rw.logits, 0)), tol);
  EXPECT_EQ(rc.tokens[0], rw.tokens[0]);
  // Decoding on from both caches agrees too.
  ForwardBatch d2;
  d2.return_logits = true;
  d2.add_sequence(&rw.tokens[0], 1, 130, pages_of(0));
  d2.add_sequence(&rc.tokens[0], 1, 130, pages_of(1));
  const auto r2 = ex.execute(d2);
  EXPECT_LE(test::normalized_error(row(r2.logits, 1), row(r2.logits, 0)), tol);
}

TEST(CudaExecutor, ChunkedPrefillEqualsWholeFp16) {
  QS_REQUIRE_GPU();
  QS_REQUIRE_DATA(kTiny);
  auto m = model::Model::load(test::data_path(kTiny));
  chunked_equals_whole(EngineDType::kFp16, *m, 2e-3);
}

TEST(CudaExecutor, ChunkedPrefillEqualsWholeW4A8KV4) {
  QS_REQUIRE_GPU();
  QS_REQUIRE_DATA("fixtures/reference_generations.json");
  bool ok = false;
  auto m = quantized_or_skip(&ok);
  if (!ok) GTEST_SKIP() << "no quantized checkpoint (set QSERVE_ENGINE_CKPT)";
  // The chunks read their prefix KV4-quantized where the whole prefill used it unquantized: a KV4 quantization
  // step on 2/3 of the context (~5% relative on K/V) moves the logits by a few percent.
  chunked_equals_whole(EngineDType::kW4A8KV4, *m, 0.1);
}

// A CUDA graph captured at the first decode step, replayed while the contexts grow across page boundaries,
// equals eager steps of a graph-free executor.
void graph_replay_equals_eager(EngineDType d, model::Model& m) {
  CudaExecutor g(m, small_options(d, true));
  CudaExecutor e(m, small_options(d, false));
  const auto prompts = awkward_prompts();
  const std::vector<int> pick = {3, 1, 4};  // 63, 3, 64 tokens: 3 sequences, bucket 4 (one padded row)
  std::vector<int32_t> tok(3);
  std::vector<int> ctx(3);
  {
    ForwardBatch b;
    for (int i = 0; i < 3; ++i) {
      const auto& p = prompts[size_t(pick[size_t(i)])];
      b.add_sequence(p.data(), int32_t(p.size()), 0, pages_of(i));
      ctx[size_t(i)] = int(p.size());
    }
    const auto rg = g.execute(b);
    const auto re = e.execute(b);
    for (int i = 0; i < 3; ++i) {
      EXPECT_EQ(rg.tokens[size_t(i)], re.tokens[size_t(i)]);
      tok[size_t(i)] = rg.tokens[size_t(i)];
    }
  }
  for (int step = 0; step < 12; ++step) {
    ForwardBatch b;
    b.return_logits = true;
    for (int i = 0; i < 3; ++i) b.add_sequence(&tok[size_t(i)], 1, ctx[size_t(i)], pages_of(i));
    const auto rg = g.execute(b);
    const auto re = e.execute(b);
    for (int i = 0; i < 3; ++i) {
      EXPECT_LE(test::normalized_error(row(rg.logits, i), row(re.logits, i)), 2e-3) << "step " << step << " seq " << i;
      tok[size_t(i)] = re.tokens[size_t(i)];
      ++ctx[size_t(i)];
    }
  }
  EXPECT_EQ(g.num_graphs(), 1);
  EXPECT_EQ(e.num_graphs(), 0);
}

TEST(CudaExecutor, GraphReplayEqualsEagerFp16) {
  QS_REQUIRE_GPU();
  QS_REQUIRE_DATA(kTiny);
  auto m = model::Model::load(test::data_path(kTiny));
  graph_replay_equals_eager(EngineDType::kFp16, *m);
}

TEST(CudaExecutor, GraphReplayEqualsEagerFp8) {
  QS_REQUIRE_GPU();
  QS_REQUIRE_DATA(kTiny);
  auto m = model::Model::load(test::data_path(kTiny));
  graph_replay_equals_eager(EngineDType::kFp8, *m);
}

// The FP8 baseline (e4m3 weights per channel, per-token e4m3 activations, FP8 cache) on the real model: logits
// close to the HF FP32 reference. Bound: e4m3 keeps 3 mantissa bits (relative rounding <= 2^-4 per element, ~2^-5.6
// RMS for uniform mantissas); averaged through the GEMM sums and four layers the logits move by a few percent, so
// 0.1 catches a wrong scale or layout (> 0.5) without chasing the format's noise.
TEST(CudaExecutor, Fp8IsCloseToTheReferenceLogits) {
  QS_REQUIRE_GPU();
  QS_REQUIRE_DATA(kTiny);
  QS_REQUIRE_DATA("fixtures/reference_logits.safetensors");
  auto m = model::Model::load(test::data_path(kTiny));
  CudaExecutor ex(*m, small_options(EngineDType::kFp8));
  const auto ref = io::SafetensorsFile::open(test::data_path("fixtures/reference_logits.safetensors"));
  int agree = 0, total = 0;
  double worst = 0.0;
  for (const Case& c : reference_cases()) {
    ForwardBatch b;
    b.add_sequence(c.ids.data(), int32_t(c.ids.size()), 0, pages_of(0));
    b.all_logits = true;
    const auto r = ex.execute(b);
    const Tensor want = ref->get(c.logits_name).to_f32();
    const double err = test::normalized_error(r.logits.data<float>(), want.data<float>(), size_t(want.numel()));
    worst = std::max(worst, err);
    EXPECT_LE(err, 0.1) << c.logits_name;
    const auto g = generate(ex, c.ids, int(c.greedy.size()));
    for (size_t i = 0; i < g.size() && g[i] == c.greedy[i]; ++i) ++agree;
    total += int(c.greedy.size());
  }
  std::printf("fp8: worst logits normalized error %.4f; greedy %d of %d reference tokens before the first "
              "divergence\n", worst, agree, total);
}

TEST(CudaExecutor, GraphReplayEqualsEagerW4A8KV4) {
  QS_REQUIRE_GPU();
  QS_REQUIRE_DATA("fixtures/reference_generations.json");
  bool ok = false;
  auto m = quantized_or_skip(&ok);
  if (!ok) GTEST_SKIP() << "no quantized checkpoint (set QSERVE_ENGINE_CKPT)";
  graph_replay_equals_eager(EngineDType::kW4A8KV4, *m);
}

// WikiText-2 perplexity over 2 windows of 2048 tokens (GPTQ protocol: text tokenized with BOS, windows without
// BOS) on the GPU vs the CPU path, each window one prefill (so the CPU attends to the window's own K/V
// unquantized, as the GPU prefill kernel does). Bound 0.5% (issue 8), the FP16 model 0.1% (2e-3 logits error).
double window_nll(const float* logits, int64_t vocab, const int32_t* ids, int64_t n) {
  double s = 0.0;
  for (int64_t i = 0; i + 1 < n; ++i) s += quant::eval::token_nll(logits + i * vocab, vocab, ids[i + 1]);
  return s;
}

void check_perplexity(model::Model& cpu, EngineDType d, model::KvMode kv, double tol, const std::string& label) {
  QS_REQUIRE_DATA("text/wikitext2_test.txt");
  std::ifstream f(test::data_path("text/wikitext2_test.txt"), std::ios::binary);
  std::string text(100000, '\0');
  f.read(text.data(), std::streamsize(text.size()));
  text.resize(size_t(f.gcount()));
  const auto tok = tokenizer::Tokenizer::from_dir(test::data_path(kTiny));
  const std::vector<int32_t> ids = quant::eval::tokenize_dataset(tok, text);
  const int64_t L = 2048;
  ASSERT_GE(int64_t(ids.size()), 2 * L + 16);  // the cut at 100 kB is far past the two windows
  CudaExecutorOptions o = small_options(d, false);
  o.max_context = 2048;
  o.max_batch_tokens = 2048;
  CudaExecutor ex(cpu, o);
  double nll_gpu = 0.0, nll_cpu = 0.0;
  for (int w = 0; w < 2; ++w) {
    const int32_t* win = ids.data() + w * L;
    ForwardBatch b;
    std::vector<int32_t> pages;
    for (int p = 0; p < 32; ++p) pages.push_back(p);
    b.add_sequence(win, int32_t(L), 0, pages);
    b.all_logits = true;
    const auto r = ex.execute(b);
    nll_gpu += window_nll(r.logits.data<float>(), r.logits.dim(1), win, L);
    model::KvCache cache = cpu.new_cache(kv);
    const Tensor lc = cpu.forward({{win, L, &cache, true}}, model::LogitsMode::kAll);
    nll_cpu += window_nll(lc.data<float>(), lc.dim(1), win, L);
  }
  const double ppl_gpu = std::exp(nll_gpu / double(2 * (L - 1))), ppl_cpu = std::exp(nll_cpu / double(2 * (L - 1)));
  std::printf("%s: WikiText-2 (2 windows of 2048) perplexity GPU %.4f, CPU %.4f (%+.3f%%)\n", label.c_str(), ppl_gpu,
              ppl_cpu, 100.0 * (ppl_gpu / ppl_cpu - 1.0));
  EXPECT_LE(std::abs(ppl_gpu / ppl_cpu - 1.0), tol) << label;
}

TEST(CudaExecutor, PerplexityFp16MatchesCpuFp32) {
  QS_REQUIRE_GPU();
  QS_REQUIRE_DATA(kTiny);
  auto m = model::Model::load(test::data_path(kTiny));
  check_perplexity(*m, EngineDType::kFp16, model::KvMode::kFp32, 1e-3, "fp16");
}

TEST(CudaExecutor, PerplexityQuantizedMatchesCpuIntegerPath) {
  QS_REQUIRE_GPU();
  for (const char* name : {"tiny-pc", "tiny-g128"}) {
    const std::string dir = ckpt_dir(name);
    if (!dir_exists(dir)) GTEST_SKIP() << "no quantized checkpoint at " << dir << " (set QSERVE_ENGINE_CKPT)";
    auto loaded = model::load_checkpoint(dir, {});
    check_perplexity(*loaded.model, EngineDType::kW4A8KV4, model::KvMode::kKv4, 5e-3, name);
  }
}

TEST(CudaExecutor, SeededSamplingIsReproducibleAcrossBatching) {
  QS_REQUIRE_GPU();
  QS_REQUIRE_DATA(kTiny);
  auto m = model::Model::load(test::data_path(kTiny));
  CudaExecutor ex(*m, small_options(EngineDType::kFp16));
  const auto prompts = awkward_prompts();
  model::SamplingParams sp;
  sp.temperature = 0.8f;
  sp.top_k = 40;
  sp.top_p = 0.9f;
  sp.seed = 1234;
  ForwardBatch one, two;
  one.add_sequence(prompts[2].data(), 17, 0, pages_of(0), true, sp, 5);
  two.add_sequence(prompts[3].data(), 63, 0, pages_of(1), true, {}, 0);
  two.add_sequence(prompts[2].data(), 17, 0, pages_of(2), true, sp, 5);
  one.return_logits = true;
  const auto r1 = ex.execute(one);
  const auto r2 = ex.execute(two);
  EXPECT_EQ(r1.tokens[0], r2.tokens[1]);
  // The host sampler on the same logits row picks the same token.
  EXPECT_EQ(r1.tokens[0], model::Sampler(sp).sample_at(r1.logits.data<float>(), r1.logits.dim(1), {}, 5));
  // Decode steps (the first runs eagerly and captures the graph, the second replays it) sample on the GPU too.
  ForwardBatch d;
  d.return_logits = true;
  d.add_sequence(&r2.tokens[0], 1, 63, pages_of(1), true, {}, 1);
  d.add_sequence(&r2.tokens[1], 1, 17, pages_of(2), true, sp, 6);
  for (int rep = 0; rep < 2; ++rep) {
    const auto r3 = ex.execute(d);
    const int64_t V = r3.logits.dim(1);
    EXPECT_EQ(r3.tokens[0], model::argmax(r3.logits.data<float>(), V)) << rep;
    EXPECT_EQ(r3.tokens[1], model::Sampler(sp).sample_at(r3.logits.data<float>() + V, V, {}, 6)) << rep;
  }
  EXPECT_EQ(ex.num_graphs(), 1);
}

TEST(CudaExecutor, RandomWeightsRunInANamedShape) {
  QS_REQUIRE_GPU();
  io::ModelConfig c = engine::builtin_shape("llama-2-7b");
  c.num_layers = 2;  // the shape of the real layers, fewer of them
  for (EngineDType d : {EngineDType::kW4A8KV4, EngineDType::kFp16, EngineDType::kFp8}) {
    for (bool g128 : {false, true}) {
      if (d != EngineDType::kW4A8KV4 && g128) continue;
      CudaExecutorOptions o = small_options(d);
      engine::RandomWeightsOptions rw;
      rw.g128 = g128;
      CudaExecutor ex(c, o, rw);
      const auto prompts = awkward_prompts();
      ForwardBatch b;
      b.return_logits = true;
      b.add_sequence(prompts[6].data(), 130, 0, pages_of(0));
      b.add_sequence(prompts[1].data(), 3, 0, pages_of(1));
      const auto r = ex.execute(b);
      for (int64_t i = 0; i < r.logits.numel(); ++i) ASSERT_TRUE(std::isfinite(r.logits.data<float>()[i])) << i;
      ForwardBatch d1;
      d1.add_sequence(&r.tokens[0], 1, 130, pages_of(0));
      d1.add_sequence(&r.tokens[1], 1, 3, pages_of(1));
      const auto r2 = ex.execute(d1);
      EXPECT_GE(r2.tokens[0], 0);
      EXPECT_LT(r2.tokens[1], c.vocab_size);
    }
  }
}

TEST(CudaExecutor, BadInputIsAClearErrorBeforeAnyWork) {
  QS_REQUIRE_GPU();
  io::ModelConfig c = engine::builtin_shape("llama-2-7b");
  c.num_layers = 1;
  io::ModelConfig bad = c;
  bad.head_dim = 64;
  bad.num_heads = 64;
  EXPECT_NE(test::error_of([&] { CudaExecutor(bad, small_options(EngineDType::kFp16), {}); }).find("head_dim"),
            std::string::npos);
  bad = c;
  bad.hidden_size = 4000;
  EXPECT_NE(test::error_of([&] { CudaExecutor(bad, small_options(EngineDType::kFp16), {}); }).find("hidden_size"),
            std::string::npos);
  CudaExecutor ex(c, small_options(EngineDType::kW4A8KV4), {});
  std::vector<int32_t> ids(1100, 5);
  ForwardBatch big;
  big.add_sequence(ids.data(), 500, 0, pages_of(0));
  big.add_sequence(ids.data(), 500, 0, pages_of(1));
  big.add_sequence(ids.data(), 100, 0, pages_of(2));
  EXPECT_NE(test::error_of([&] { ex.execute(big); }).find("max_batch_tokens"), std::string::npos);
  ForwardBatch far;
  far.add_sequence(ids.data(), 1, 0, {int32_t(ex.pool().num_pages)});
  EXPECT_NE(test::error_of([&] { ex.execute(far); }), "");
  // The executor still works after the rejected batches.
  ForwardBatch ok;
  ok.add_sequence(ids.data(), 5, 0, pages_of(0));
  EXPECT_GE(ex.execute(ok).tokens[0], 0);
}

}  // namespace
}  // namespace qs

#else
TEST(CudaExecutor, NeedsACudaBuild) { GTEST_SKIP() << "built without CUDA"; }
#endif
