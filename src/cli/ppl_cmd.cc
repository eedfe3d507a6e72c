// `qserve ppl`: WikiText-2 style perplexity of FP (Hugging Face) and quantized checkpoints with the GPTQ protocol
// (quant/eval/perplexity.h), optionally with KL divergence and top-1 agreement against a reference FP model.
// Several --model values are evaluated in one pass over the data (the reference runs once per window).
//   qserve ppl --model DIR [--model DIR2 ...] [--dataset FILE] [--seq-len 2048] [--max-windows N]
//              [--reference HF_DIR] [--kv auto|fp32|kv4] [--rtn SCHEME] [--weight-only] [--json FILE]
// --rtn quantizes HF models in memory with round-to-nearest (quant/eval/rtn_model.h) instead of loading a
// quantized checkpoint; --weight-only runs quantized linears on FP32 activations (W4A16 ablation).
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "core/error.h"
#include "core/paths.h"
#include "quant/eval/model_loader.h"
#include "quant/eval/perplexity.h"
#include "quant/eval/rtn_model.h"
#include "tokenizer/tokenizer.h"

namespace {

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
};

std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  QS_CHECK(f.good()) << "cannot read dataset file '" << path << "'";
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// auto: the KV cache a quantized checkpoint was made for (KV4 unless its metadata says otherwise; --rtn models
// are W4A8KV4 / W8A8 with KV4 too); FP checkpoints: FP32.
qs::model::KvMode kv_mode_for(const std::string& kv, const qs::quant::eval::LoadedModel& lm) {
  if (kv == "fp32") return qs::model::KvMode::kFp32;
  if (kv == "kv4") return qs::model::KvMode::kKv4;
  return lm.quantized && lm.kv_bits == 4 ? qs::model::KvMode::kKv4 : qs::model::KvMode::kFp32;
}

void run(const PplArgs& a) {
  QS_CHECK(!a.models.empty()) << "ppl: give at least one --model";
  const std::string dataset = a.dataset.empty() ? qs::data_dir() + "/text/wikitext2_test.txt" : a.dataset;
  const bool tty = isatty(fileno(stderr));

  qs::quant::eval::LoadOptions lo;
  lo.weight_only = a.weight_only;
  std::vector<qs::quant::eval::LoadedModel> loaded;
  std::vector<qs::quant::eval::EvalModel> evals;
  for (const auto& dir : a.models) {
    loaded.push_back(qs::quant::eval::load_for_eval(dir, lo));
    auto& lm = loaded.back();
    if (!a.rtn.empty()) {
      QS_CHECK(!lm.quantized) << "ppl: --rtn quantizes FP checkpoints, but '" << dir << "' is already quantized";
      qs::quant::eval::apply_rtn(*lm.model, qs::quant::eval::parse_rtn_scheme(a.rtn));
      lm.quantized = true;
      // W4A8 schemes are W4A8KV4; W8A8 (SmoothQuant's setting) and weight-only ones keep an FP KV cache.
      lm.kv_bits = a.rtn.rfind("w4a8", 0) == 0 ? 4 : 32;
      lm.description = std::string("rtn ") + a.rtn;
    }
  }
  for (auto& lm : loaded)
    evals.push_back({lm.dir, lm.model.get(), kv_mode_for(a.kv, lm)});

  std::unique_ptr<qs::quant::eval::LoadedModel> ref;
  if (!a.reference.empty()) {
    ref = std::make_unique<qs::quant::eval::LoadedModel>(qs::quant::eval::load_for_eval(a.reference, {}));
    QS_CHECK(!ref->quantized) << "ppl: --reference must be an FP (Hugging Face) checkpoint";
  }
  const std::string tok_dir = !a.tokenizer.empty() ? a.tokenizer
                              : loaded.front().tokenizer_dir.empty() && ref ? ref->tokenizer_dir
                                                                            : loaded.front().tokenizer_dir;
  QS_CHECK(!tok_dir.empty()) << "ppl: no tokenizer.json beside '" << a.models.front()
                             << "'; give --tokenizer DIR (or --reference)";
  const auto tok = qs::tokenizer::Tokenizer::from_dir(tok_dir);
  const std::vector<int32_t> tokens = qs::quant::eval::tokenize_dataset(tok, read_text(dataset));
  const int64_t nw = qs::quant::eval::num_windows(int64_t(tokens.size()), a.seq_len, a.max_windows);
  std::fprintf(stderr, "ppl: %s: %zu tokens, %lld windows of %lld%s\n", dataset.c_str(), tokens.size(),
               (long long)nw, (long long)a.seq_len, a.max_windows > 0 ? " (--max-windows)" : "");
  for (size_t i = 0; i < loaded.size(); ++i)
    std::fprintf(stderr, "ppl: model %s: %s, kv %s\n", loaded[i].dir.c_str(), loaded[i].description.c_str(),
                 qs::model::kv_mode_name(evals[i].kv_mode));

  qs::quant::eval::EvalOptions opt;
  opt.seq_len = a.seq_len;
  opt.max_windows = a.max_windows;
  const auto t0 = std::chrono::steady_clock::now();
  opt.progress = [&](int64_t done, int64_t total) {
    const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double eta = el / double(done) * double(total - done);
    std::fprintf(stderr, tty ? "\rppl: window %lld/%lld  %.0fs elapsed, ETA %.0fs   " : "ppl: window %lld/%lld  %.0fs elapsed, ETA %.0fs\n",
                 (long long)done, (long long)total, el, eta);
    if (tty && done == total) std::fprintf(stderr, "\n");
  };
  qs::quant::eval::EvalModel ref_eval;
  if (ref) ref_eval = {ref->dir, ref->model.get(), qs::model::KvMode::kFp32};
  const auto results = qs::quant::eval::evaluate(tokens, evals, ref ? &ref_eval : nullptr, opt);

  nlohmann::json out = nlohmann::json::array();
  for (size_t i = 0; i < results.size(); ++i) {
    const auto& r = results[i];
    const bool is_ref = ref && i + 1 == results.size();
    const std::string desc = is_ref ? "reference, " + ref->description : loaded[i].description;
    const char* kv = qs::model::kv_mode_name(is_ref ? qs::model::KvMode::kFp32 : evals[i].kv_mode);
    std::printf("%s [%s, kv %s]: ppl %.4f", r.label.c_str(), desc.c_str(), kv, r.ppl);
    if (r.has_reference) std::printf("  KL %.5f  top1 %.4f", r.kl_mean, r.top1);
    std::printf("  (%lld windows x %lld, %lld tokens, %.1fs)\n", (long long)r.windows, (long long)a.seq_len,
                (long long)r.tokens, r.seconds);
    nlohmann::json j = {{"model", r.label},         {"description", desc},  {"kv", kv},
                        {"reference", is_ref},      {"ppl", r.ppl},         {"nll_sum", r.nll_sum},
                        {"windows", r.windows},     {"seq_len", a.seq_len}, {"tokens", r.tokens},
                        {"seconds", r.seconds},     {"dataset", dataset}};
    if (r.has_reference) {
      j["kl"] = r.kl_mean;
      j["top1"] = r.top1;
      j["reference_model"] = ref->dir;
    }
    out.push_back(j);
  }
  if (!a.json_out.empty()) {
    std::ofstream f(a.json_out);
    QS_CHECK(f.good()) << "ppl: cannot write '" << a.json_out << "'";
    f << out.dump(2) << "\n";
  }
}

qs::cli::CommandRegistrar reg("ppl", "Perplexity (GPTQ protocol) and KL divergence vs an FP reference",
                              [](CLI::App* sub) {
  auto a = std::make_shared<PplArgs>();
  sub->add_option("--model", a->models, "HF or quantized checkpoint directory (repeatable)")->required();
  sub->add_option("--dataset", a->dataset, "text file (default: <data>/text/wikitext2_test.txt)");
  sub->add_option("--seq-len", a->seq_len, "window length in tokens")->check(CLI::Range(2, 1 << 20));
  sub->add_option("--max-windows", a->max_windows, "evaluate only the first N windows (0: all)")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--reference", a->reference, "FP (HF) checkpoint: adds KL divergence and top-1 agreement");
  sub->add_option("--kv", a->kv, "KV cache: auto (kv4 for quantized models), fp32, kv4")
      ->check(CLI::IsMember({"auto", "fp32", "kv4"}));
  sub->add_option("--rtn", a->rtn,
                  "quantize HF models in memory (round to nearest): w8a8, w4a8-per-channel, w4a8-g128, "
                  "w4a16-per-channel, w4a16-g128");
  sub->add_flag("--weight-only", a->weight_only, "quantized checkpoints: FP32 activations (W4A16)");
  sub->add_option("--tokenizer", a->tokenizer, "directory with tokenizer.json (default: the first model's)");
  sub->add_option("--json", a->json_out, "write the results as JSON");
  sub->callback([a] { run(*a); });
});

}  // namespace
