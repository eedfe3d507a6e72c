// `qserve ppl`: WikiText-2 style perplexity of FP (Hugging Face) and quantized checkpoints with the GPTQ protocol
// (quant/eval/perplexity.h), optionally with KL divergence and top-1 agreement against a reference FP model.
// Several --model values are evaluated in one pass over the data (the reference runs once per window):
//   qserve ppl --model SPEC [--model SPEC ...] [--dataset FILE] [--seq-len 2048] [--max-windows N]
//              [--reference HF_DIR] [--kv auto|fp32|kv4] [--rtn SCHEME] [--weight-only] [--json FILE]
//              [--device cpu]
// SPEC is a directory, optionally followed by per-model settings that override the global flags:
//   DIR@kv=kv4,rtn=w8a8,weight-only,label=NAME
// rtn=SCHEME quantizes an HF model in memory with round-to-nearest (quant/eval/rtn_model.h); weight-only runs a
// quantized checkpoint's linears on FP32 activations (W4A16 ablation); kv=auto gives KV4 to checkpoints made for
// it and to W4A8 RTN schemes, FP32 otherwise.
// Every model runs behind the executor seam (model/executor.h): --device cpu (the default) is the exact CPU
// reference executor (model/ref); --device cuda the GPU runner (engine/cuda). KV4 protocols: fake-quant (default:
// every K/V read back quantized, as QoQ evaluates; the GPU reads a prefill's own K/V back from its KV4 cache,
// kernels/kv_cache/kv_cache_readback.h) or serving (a window's prefill sees its own K/V unquantized, as the
// engine serves: with one prefill per window, the KV4 cache is then never read). On the GPU: HF checkpoints run FP16 (kv=kv4: over a KV4
// cache), quantized ones W4A8KV4 (kv=fp32: FP16 cache), rtn=w8a8 the INT8 GEMM with an FP16 cache, rtn=w4a16-*
// and weight-only the FP16 path over the weights dequantized to FP16; the --reference is the FP16 GPU model (the
// CPU's is FP32), and NLL / KL / top-1 are computed on the GPU (model/window_scorer.h), the reference's logits
// kept there for all the models of the call.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "core/error.h"
#include "core/file_io.h"
#include "core/paths.h"
#include "cli/executor_factory.h"
#include "model/ref/ref_executor.h"
#include "model/checkpoint/load.h"
#include "quant/eval/perplexity.h"
#include "quant/eval/rtn_model.h"
#include "tokenizer/tokenizer.h"

namespace {

namespace ev = qs::quant::eval;

struct PplArgs {
  std::vector<std::string> models;
  std::string dataset;
  int64_t seq_len = 2048;
  int64_t max_windows = 0;
  std::string reference;
  std::string kv = "auto";
  std::string rtn;
  bool weight_only = false;
  std::string json_out;
  std::string tokenizer;
  std::string device = "cpu";
  std::string kv_protocol = "fake-quant";
  bool host_scores = false;
};

// One --model value with its settings.
struct ModelSpec {
  std::string dir, label, kv, rtn;
  bool weight_only = false;
};

ModelSpec parse_spec(const std::string& s, const PplArgs& a) {
  ModelSpec m;
  m.kv = a.kv;
  m.rtn = a.rtn;
  m.weight_only = a.weight_only;
  const size_t at = s.rfind('@');
  m.dir = s.substr(0, at);
  if (at != std::string::npos) {
    std::stringstream ss(s.substr(at + 1));
    std::string item;
    while (std::getline(ss, item, ',')) {
      const size_t eq = item.find('=');
      const std::string key = item.substr(0, eq), val = eq == std::string::npos ? "" : item.substr(eq + 1);
      if (key == "kv") {
        QS_CHECK(val == "auto" || val == "fp32" || val == "kv4") << "--model " << s << ": kv must be auto, fp32 or kv4";
        m.kv = val;
      } else if (key == "rtn") {
        ev::parse_rtn_scheme(val);  // validates
        m.rtn = val;
      } else if (key == "weight-only" && eq == std::string::npos) {
        m.weight_only = true;
      } else if (key == "label") {
        m.label = val;
      } else {
        QS_FAIL() << "--model " << s << ": unknown setting '" << item
                  << "' (expected kv=..., rtn=..., weight-only, label=...)";
      }
    }
  }
  if (m.label.empty()) m.label = s;
  return m;
}

std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  QS_CHECK(f.good()) << "cannot read dataset file '" << path << "'";
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

qs::KvDType kv_dtype_for(const std::string& kv, const qs::model::LoadedModel& lm) {
  if (kv == "fp32") return qs::KvDType::kFp32;
  if (kv == "kv4") return qs::KvDType::kKv4;
  return lm.quantized && lm.kv_bits == 4 ? qs::KvDType::kKv4 : qs::KvDType::kFp32;
}

// The executor that evaluates one model (it takes the model over): one window of seq_len tokens at a time.
std::unique_ptr<qs::model::Executor> make_executor(const PplArgs& a, std::unique_ptr<qs::model::Model> m,
                                                   bool quantized, qs::KvDType kv, bool reference = false) {
  const qs::model::RefExecutorOptions w = ev::window_executor_options(kv, a.seq_len);
  qs::cli::ExecutorFlags f;
  f.page_size = w.page_size;
  f.kv_pages = w.num_pages;
  f.max_batch_tokens = w.max_batch_tokens;
  f.max_batch_seqs = w.max_batch_seqs;
  f.max_context = int32_t(a.seq_len);
  f.cuda_graphs = false;  // whole-window prefills only
  if (reference) f.keep_logits_rows = int32_t(a.seq_len);  // the models are scored against it on the device
  return qs::cli::make_executor_for(std::move(m), quantized, kv, a.device, f);
}

void run(PplArgs a) {
  QS_CHECK(!a.models.empty()) << "ppl: give at least one --model";
  const std::string dataset = a.dataset.empty() ? qs::data_dir() + "/text/wikitext2_test.txt" : a.dataset;
  const bool tty = isatty(fileno(stderr));
  a.device = qs::cli::resolve_device(a.device);

  std::vector<ModelSpec> specs;
  for (const auto& s : a.models) specs.push_back(parse_spec(s, a));
  std::vector<qs::model::LoadedModel> loaded;
  std::vector<std::unique_ptr<qs::model::Executor>> executors;
  std::vector<ev::EvalModel> evals;
  for (const auto& sp : specs) {
    qs::model::LoadOptions lo;
    lo.weight_only = sp.weight_only;
    loaded.push_back(qs::model::load_checkpoint(sp.dir, lo));
    auto& lm = loaded.back();
    if (!sp.rtn.empty()) {
      QS_CHECK(!lm.quantized) << "ppl: rtn quantizes FP checkpoints, but '" << sp.dir << "' is already quantized";
      ev::apply_rtn(*lm.model, ev::parse_rtn_scheme(sp.rtn));
      lm.quantized = true;
      // W4A8 schemes are W4A8KV4; W8A8 (SmoothQuant's setting) and weight-only ones keep an FP KV cache.
      lm.kv_bits = sp.rtn.rfind("w4a8", 0) == 0 ? 4 : 32;
      lm.description = "rtn " + sp.rtn + " (in memory)";
    }
    executors.push_back(make_executor(a, std::move(lm.model), lm.quantized, kv_dtype_for(sp.kv, lm)));
    evals.push_back({sp.label, executors.back().get()});
  }

  std::unique_ptr<qs::model::LoadedModel> ref;
  std::unique_ptr<qs::model::Executor> ref_exec;
  if (!a.reference.empty()) {
    ref = std::make_unique<qs::model::LoadedModel>(qs::model::load_checkpoint(a.reference, {}));
    QS_CHECK(!ref->quantized) << "ppl: --reference must be an FP (Hugging Face) checkpoint";
    ref_exec = make_executor(a, std::move(ref->model), false, qs::KvDType::kFp32, /*reference=*/true);
  }
  std::string tok_dir = a.tokenizer;
  for (size_t i = 0; tok_dir.empty() && i < loaded.size(); ++i) tok_dir = loaded[i].tokenizer_dir;
  if (tok_dir.empty() && ref) tok_dir = ref->tokenizer_dir;
  QS_CHECK(!tok_dir.empty()) << "ppl: no tokenizer.json found beside the models; give --tokenizer DIR";
  const auto tok = qs::tokenizer::Tokenizer::from_dir(tok_dir);
  const std::vector<int32_t> tokens = ev::tokenize_dataset(tok, read_text(dataset));
  const int64_t nw = ev::num_windows(int64_t(tokens.size()), a.seq_len, a.max_windows);
  std::fprintf(stderr, "ppl: %s: %zu tokens, %lld windows of %lld%s\n", dataset.c_str(), tokens.size(),
               (long long)nw, (long long)a.seq_len, a.max_windows > 0 ? " (--max-windows)" : "");
  for (size_t i = 0; i < loaded.size(); ++i)
    std::fprintf(stderr, "ppl: model %s: %s, kv %s (%s)\n", evals[i].label.c_str(), loaded[i].description.c_str(),
                 qs::kv_dtype_name(evals[i].executor->pool().dtype), evals[i].executor->name().c_str());

  ev::EvalOptions opt;
  opt.seq_len = a.seq_len;
  opt.max_windows = a.max_windows;
  opt.quantized_self_kv = a.kv_protocol == "fake-quant";
  opt.device_scores = !a.host_scores;
  const auto t0 = std::chrono::steady_clock::now();
  opt.progress = [&](int64_t done, int64_t total) {
    const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double eta = el / double(done) * double(total - done);
    std::fprintf(stderr, tty ? "\rppl: window %lld/%lld  %.0fs elapsed, ETA %.0fs   "
                             : "ppl: window %lld/%lld  %.0fs elapsed, ETA %.0fs\n",
                 (long long)done, (long long)total, el, eta);
    if (tty && done == total) std::fprintf(stderr, "\n");
  };
  ev::EvalModel ref_eval;
  if (ref) ref_eval = {a.reference, ref_exec.get()};
  const auto results = ev::evaluate(tokens, evals, ref ? &ref_eval : nullptr, opt);

  nlohmann::json out = nlohmann::json::array();
  for (size_t i = 0; i < results.size(); ++i) {
    const auto& r = results[i];
    const bool is_ref = ref && i + 1 == results.size();
    const qs::model::LoadedModel& lm = is_ref ? *ref : loaded[i];
    const std::string desc = is_ref ? "reference, " + ref->description : lm.description;
    const qs::model::Executor* ex = is_ref ? ref_exec.get() : evals[i].executor;
    const char* kv = qs::kv_dtype_name(ex->pool().dtype);
    std::printf("%s [%s, kv %s]: ppl %.4f", r.label.c_str(), desc.c_str(), kv, r.ppl);
    if (r.has_reference) std::printf("  KL %.5f  top1 %.4f", r.kl_mean, r.top1);
    std::printf("  (%lld windows x %lld, %lld tokens, %.1fs)\n", (long long)r.windows, (long long)a.seq_len,
                (long long)r.tokens, r.seconds);
    nlohmann::json j = {{"label", r.label},     {"model", is_ref ? a.reference : specs[i].dir},
                        {"description", desc},  {"kv", kv},
                        {"reference", is_ref},  {"ppl", r.ppl},
                        {"nll_sum", r.nll_sum}, {"windows", r.windows},
                        {"seq_len", a.seq_len}, {"tokens", r.tokens},
                        {"seconds", r.seconds}, {"dataset", dataset},
                        {"device", a.device},   {"executor", ex->name()},
                        {"kv_protocol", a.kv_protocol}};
    if (!lm.qoq.is_null()) j["qoq"] = lm.qoq;
    if (r.has_reference) {
      j["kl"] = r.kl_mean;
      j["top1"] = r.top1;
      j["reference_model"] = a.reference;
    }
    out.push_back(j);
  }
  if (!a.json_out.empty()) {
    qs::write_file_checked(a.json_out, out.dump(2) + "\n");
  }
}

qs::cli::CommandRegistrar reg("ppl", "Perplexity (GPTQ protocol) and KL divergence vs an FP reference",
                              [](CLI::App* sub) {
  auto a = std::make_shared<PplArgs>();
  sub->add_option("--model", a->models,
                  "HF or quantized checkpoint directory, optionally DIR@kv=kv4,rtn=w8a8,weight-only,label=NAME "
                  "(repeatable)")
      ->required();
  sub->add_option("--dataset", a->dataset, "text file (default: <data>/text/wikitext2_test.txt)");
  sub->add_option("--seq-len", a->seq_len, "window length in tokens")->check(CLI::Range(2, 1 << 20));
  sub->add_option("--max-windows", a->max_windows, "evaluate only the first N windows (0: all)")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--reference", a->reference, "FP (HF) checkpoint: adds KL divergence and top-1 agreement");
  sub->add_option("--kv", a->kv, "KV cache: auto (kv4 for W4A8KV4 models), fp32, kv4")
      ->check(CLI::IsMember({"auto", "fp32", "kv4"}));
  sub->add_option("--rtn", a->rtn,
                  "quantize HF models in memory (round to nearest): w8a8, w4a8-per-channel, w4a8-g128, "
                  "w4a16-per-channel, w4a16-g128");
  sub->add_flag("--weight-only", a->weight_only, "quantized checkpoints: FP32 activations (W4A16)");
  sub->add_option("--tokenizer", a->tokenizer, "directory with tokenizer.json (default: the first model's)");
  sub->add_option("--json", a->json_out, "write the results as JSON");
  sub->add_option("--device", a->device, "executor: cpu (the exact CPU reference, default), cuda (GPU runner), auto")
      ->check(CLI::IsMember({"cpu", "cuda", "auto"}));
  sub->add_option("--kv-protocol", a->kv_protocol,
                  "KV4 evaluation: fake-quant (default: every K/V read back quantized) or serving (a window's "
                  "prefill sees its own K/V unquantized, as the engine runs)")
      ->check(CLI::IsMember({"fake-quant", "serving"}));  // both on cpu and cuda
  sub->add_flag("--host-scores", a->host_scores,
                "cuda: copy every window's logits to the host and score them there (timing comparisons; the default "
                "scores on the GPU)");
  sub->callback([a] { run(*a); });
});

}  // namespace
