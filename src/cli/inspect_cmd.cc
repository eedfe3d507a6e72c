// `qserve inspect --model DIR`: prints a checkpoint's parsed config, its tensor table (name, dtype, shape, shard)
// and the parameter count, without loading the weights (the safetensors files are only memory-mapped).
#include <cstdio>
#include <filesystem>
#include <map>
#include <string>

#include "cli/command.h"
#include "core/error.h"
#include "core/file_io.h"
#include "io/model_config.h"
#include "io/safetensors.h"

namespace {

void print_config(const qs::io::ModelConfig& c) {
  std::printf("architecture        %s (model_type %s)\n", c.architecture.c_str(), c.model_type.c_str());
  std::printf("hidden_size         %d\n", c.hidden_size);
  std::printf("intermediate_size   %d\n", c.intermediate_size);
  std::printf("layers              %d\n", c.num_layers);
  std::printf("heads               %d query, %d kv (GQA %d), head_dim %d\n", c.num_heads, c.num_kv_heads,
              c.gqa_ratio(), c.head_dim);
  std::printf("vocab_size          %d\n", c.vocab_size);
  std::printf("max_positions       %d\n", c.max_position_embeddings);
  std::printf("rms_norm_eps        %g\n", c.rms_norm_eps);
  std::printf("rope                theta %g, scaling %s", c.rope_theta, c.rope_scaling.type.c_str());
  if (c.rope_scaling.type != "default") std::printf(" (factor %g)", c.rope_scaling.factor);
  std::printf("\n");
  std::printf("tied embeddings     %s\n", c.tie_word_embeddings ? "yes" : "no");
  std::printf("q/k/v bias          %s\n", c.attention_bias ? "yes" : "no");
  std::printf("sliding_window      %d%s\n", c.sliding_window, c.sliding_window ? "" : " (full attention)");
  std::string bos, eos;
  for (int id : c.bos_token_ids) bos += (bos.empty() ? "" : ", ") + std::to_string(id);
  for (int id : c.eos_token_ids) eos += (eos.empty() ? "" : ", ") + std::to_string(id);
  std::printf("bos / eos ids       [%s] / [%s]\n", bos.c_str(), eos.c_str());
  std::printf("dtype               %s\n", c.torch_dtype.c_str());
}

void run(const std::string& dir) {
  QS_CHECK(std::filesystem::exists(dir)) << "--model " << dir << " does not exist";
  QS_CHECK(std::filesystem::is_directory(dir))
      << "--model " << dir << " is a file; give the checkpoint folder (the one holding config.json)";
  const qs::io::ModelConfig c = qs::io::load_model_config(dir);
  print_config(c);
  const qs::io::TensorStore store = qs::io::TensorStore::open(dir);
  const auto names = store.names();
  size_t w = 4;
  for (const auto& n : names) w = std::max(w, n.size());
  std::printf("\n%-*s  %-5s  %-16s  %s\n", int(w), "name", "dtype", "shape", "file");
  int64_t params = 0, bytes = 0;
  std::map<std::string, int64_t> by_dtype;
  for (const auto& n : names) {
    const auto& info = store.info(n);
    const int64_t numel = qs::shape_numel(info.shape);
    params += numel;
    bytes += int64_t(info.nbytes);
    by_dtype[qs::dtype_name(info.dtype)] += numel;
    std::printf("%-*s  %-5s  %-16s  %s\n", int(w), n.c_str(), qs::dtype_name(info.dtype),
                qs::shape_str(info.shape).c_str(), std::filesystem::path(info.file).filename().c_str());
  }
  std::printf("\n%zu tensors, %lld parameters (%.2fM), %.1f MiB of tensor data\n", names.size(),
              (long long)params, double(params) / 1e6, double(bytes) / (1024.0 * 1024.0));
  for (const auto& [dt, n] : by_dtype) std::printf("  %s: %lld\n", dt.c_str(), (long long)n);
  if (c.tie_word_embeddings && !store.has("lm_head.weight")) std::printf("lm_head: tied to model.embed_tokens\n");
  for (const auto& [k, v] : store.metadata()) std::printf("metadata %s = %.200s\n", k.c_str(), v.c_str());
  qs::CheckedWriter(stdout, "standard output").flush();  // a full disk or a closed pipe is an error, not exit 0
}

qs::cli::CommandRegistrar reg("inspect", "Print a checkpoint's config, tensor table and parameter count",
                              [](CLI::App* sub) {
                                auto dir = std::make_shared<std::string>();
                                sub->add_option("--model,-m", *dir, "checkpoint folder (config.json + safetensors)")
                                    ->required();
                                sub->callback([dir] { run(*dir); });
                              });

}  // namespace
