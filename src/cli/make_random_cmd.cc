// `qserve make-random --shape NAME --out DIR [--config FILE] [--layers N] [--seed S] [--dtype bf16|f16|f32]`: a random-weight
// Hugging Face checkpoint in a real model shape (io/random_checkpoint.h), for timing quantization at scale and for
// engine benchmarks (--layers N keeps only the first N decoder layers: per-layer timing of a shape too large for the
// disk, e.g. Llama-2-70B). The config comes from --config FILE, else from $QSERVE_DATA/configs/NAME.json (or
// configs/NAME/config.json). The tokenizer files of qs-llama-tiny are copied beside the weights so `quantize`,
// `ppl` and `generate` run on the folder; that tokenizer has 8,192 tokens while the checkpoint's vocab_size is
// the shape's (128,256 for Llama-3-8B): every token id it produces is valid, the extra embedding rows are simply
// never used, and the config's bos/eos ids (the shape's) are not the tokenizer's. The function is noise.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "cli/command.h"
#include "cli/seed_option.h"
#include "core/error.h"
#include "core/paths.h"
#include "io/random_checkpoint.h"

namespace {

namespace fs = std::filesystem;

struct Args {
  std::string shape, out, config, dtype = "bf16", tokenizer;
  uint64_t seed = 0;
  double stddev = 0.02;
  double max_shard_gb = 5.0;
  int layers = 0;  // 0: the shape's num_hidden_layers
};

fs::path find_config(const Args& a) {
  if (!a.config.empty()) {
    QS_CHECK(fs::is_regular_file(a.config)) << "--config " << a.config << " is not a file";
    return a.config;
  }
  QS_CHECK(!a.shape.empty()) << "give --shape NAME (a config under <data>/configs) or --config FILE";
  const fs::path base = fs::path(qs::data_dir()) / "configs";
  for (const fs::path& p : {base / (a.shape + ".json"), base / a.shape / "config.json"})
    if (fs::is_regular_file(p)) return p;
  std::string known;
  if (fs::is_directory(base))
    for (const auto& e : fs::directory_iterator(base))
      known += (known.empty() ? "" : ", ") + e.path().stem().string();
  QS_FAIL() << "unknown shape '" << a.shape << "': no " << (base / (a.shape + ".json")).string()
            << " (known: " << (known.empty() ? "none" : known) << "; or give --config FILE)";
  return {};  // not reached: QS_FAIL throws
}

void run(const Args& a) {
  const auto t0 = std::chrono::steady_clock::now();
  const fs::path cfg_path = find_config(a);
  nlohmann::json cfg;
  try {
    std::ifstream f(cfg_path);
    f >> cfg;
  } catch (const std::exception& e) {
    QS_FAIL() << cfg_path.string() << ": invalid JSON (" << e.what() << ")";
  }
  qs::io::RandomCheckpointOptions opt;
  opt.out = a.out;
  opt.seed = a.seed;
  opt.stddev = a.stddev;
  opt.max_shard_bytes = int64_t(a.max_shard_gb * 1e9);
  opt.dtype = a.dtype == "f32" ? qs::DType::F32 : a.dtype == "f16" ? qs::DType::F16 : qs::DType::BF16;
  cfg["torch_dtype"] = a.dtype == "f32" ? "float32" : a.dtype == "f16" ? "float16" : "bfloat16";
  if (a.layers > 0) cfg["num_hidden_layers"] = a.layers;
  opt.config = cfg;
  const fs::path tok = a.tokenizer.empty() ? fs::path(qs::data_dir()) / "models" / "qs-llama-tiny" : fs::path(a.tokenizer);
  QS_CHECK(fs::is_regular_file(tok / "tokenizer.json"))
      << "no tokenizer.json in " << tok.string() << " (--tokenizer DIR, default <data>/models/qs-llama-tiny)";
  // Fail on a non-empty --out before writing anything.
  QS_CHECK(!fs::exists(a.out) || (fs::is_directory(a.out) && fs::is_empty(a.out)))
      << "--out " << a.out << " exists and is not an empty directory";
  std::fprintf(stderr, "qserve make-random: %s -> %s (%s, seed %llu)\n", cfg_path.string().c_str(), a.out.c_str(),
               a.dtype.c_str(), (unsigned long long)a.seed);
  const auto st = qs::io::write_random_checkpoint(opt);
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                        "chat_template.jinja"})
    if (fs::exists(tok / f)) fs::copy_file(tok / f, fs::path(a.out) / f);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("wrote %s: %lld parameters, %.2f GB in %d shard(s), %.1f s\n", a.out.c_str(),
              (long long)st.parameters, double(st.bytes) / 1e9, st.shards, s);
}

qs::cli::CommandRegistrar reg(
    "make-random", "Write a random-weight Hugging Face checkpoint in a real model shape (benchmarks)",
    [](CLI::App* sub) {
      auto a = std::make_shared<Args>();
      sub->add_option("--shape", a->shape, "shape name: <data>/configs/NAME.json (llama-3-8b, llama-2-70b, ...)");
      sub->add_option("--config", a->config, "HF config.json to use instead of --shape");
      sub->add_option("--out", a->out, "output directory (absent or empty)")->required();
      sub->add_option("--layers", a->layers, "keep only the first N decoder layers (per-layer timing of large shapes)")
          ->check(CLI::Range(1, 1 << 16));
      qs::cli::add_seed_option(sub, "--seed", &a->seed, "random seed, 0 .. 2^64-1 (0)");
      sub->add_option("--dtype", a->dtype, "bf16 (default), f16 or f32")->check(CLI::IsMember({"bf16", "f16", "f32"}));
      sub->add_option("--stddev", a->stddev, "standard deviation of the weights (0.02)")->check(CLI::PositiveNumber);
      sub->add_option("--max-shard-gb", a->max_shard_gb, "largest shard in GB (5)")->check(CLI::PositiveNumber);
      sub->add_option("--tokenizer", a->tokenizer, "folder whose tokenizer files are copied (qs-llama-tiny)");
      sub->callback([a] { run(*a); });
    });

}  // namespace
