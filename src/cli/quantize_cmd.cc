// `qserve quantize --model HF_DIR --out DIR --variant per-channel|g128 [...]`: the QoQ pipeline (quant/qoq) on a
// Hugging Face Llama-family checkpoint, calibrated on a text file, written as a qserve quantized checkpoint.
// Every QoQ step can be switched off for ablations (--no-rotate, --no-smooth-attn, --no-smooth-down, --no-reorder,
// --no-clip, --no-gptq; --rtn = all off). SmoothAttention's exponent is searched per layer and KV head by default
// (--smooth-attn-alpha A fixes it). Safety: the model's architecture, the calibration text and the output
// location are checked before the long part starts; the checkpoint is written into DIR.tmp-<pid> beside DIR and
// renamed to DIR only when complete, so an interrupted run never leaves anything at DIR that looks finished
// (a stale DIR.tmp-* can be deleted). --out may not overlap --model, and --force replaces only a previous qserve
// output (cli/output_dir.h): nothing qserve did not write is ever deleted. The tokenizer files are copied so the checkpoint is self-contained.
// Defaults: the paper's 128 x 1024-token calibration, except for models under 1B parameters (run on the CPU
// reference backend), where 16 x 512 keeps quantization within minutes on a laptop-class CPU (docs/QOQ.md).
// Large models: the model is streamed layer by layer (quant/qoq/streaming.h: host memory bounded by one layer, the
// embeddings and the calibration states, never the whole FP model); every finished layer is saved in
// DIR.qserve-partial beside DIR, so a killed run started again with the same arguments resumes at the first
// unfinished layer (a state from other settings or another model: an error, or discarded with --force); the folder
// is removed once DIR is published. --in-memory runs the original whole-model path (the reference; same result).
// QSERVE_QUANTIZE_STOP_AFTER_LAYER=K stops (exit 1) after K layers are saved: the test hook for resuming.
// --device auto|cpu|cuda: calibration (layer forward, Hessians, GPTQ's factor and updates) on the GPU when one is
// usable (auto, the default) or asked for (cuda: an error naming the CUDA problem when there is none); peak host
// and GPU memory are printed at the end (docs/QOQ.md, "Quantizing large models").
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "backends/cpu/cpu_backend.h"
#include "backends/ref_cpu/ops.h"
#include "cli/command.h"
#include "cli/output_dir.h"
#include "cli/seed_option.h"
#include "core/error.h"
#include "core/file_io.h"
#include "core/paths.h"
#include "io/model_config.h"
#include "model/model.h"
#include "model/checkpoint/quantized_checkpoint.h"
#include "quant/cuda/layer_runner_cuda.h"
#include "quant/qoq/pipeline.h"
#include "quant/qoq/progress.h"
#include "quant/qoq/streaming.h"
#include "tokenizer/tokenizer.h"

namespace {

namespace fs = std::filesystem;
using qs::quant::qoq::QoqOptions;

// Ctrl-C / SIGTERM: the first one asks the pipeline to stop at its next check (it then throws, and the temporary
// output directory is removed); the handler restores the default action, so a second one kills at once.
volatile sig_atomic_t g_interrupted = 0;
void on_signal(int sig) {
  g_interrupted = 1;
  signal(sig, SIG_DFL);
}

struct Args {
  std::string model, out, variant, calib, backend = "cpu", propagate = "quantized", device = "auto";
  int samples = 0, len = 0;  // 0: the size-dependent default
  bool no_rotate = false, no_smooth_attn = false, no_smooth_down = false, no_reorder = false, no_clip = false,
       no_gptq = false, rtn = false, force = false, quiet = false, smooth_attn_search = false,
       smooth_attn_per_layer = false, in_memory = false;
  float smooth_attn_alpha = -1.0f;  // < 0: not given (search)
  QoqOptions opt;
};

nlohmann::json read_hf_config(const std::string& dir) {
  const fs::path p = fs::path(dir) / "config.json";
  QS_CHECK(fs::exists(dir)) << "--model " << dir << " does not exist";
  QS_CHECK(fs::is_directory(dir)) << "--model " << dir << " is a file; give the checkpoint folder (the one holding config.json)";
  QS_CHECK(fs::exists(p)) << dir << " has no config.json: not a Hugging Face checkpoint";
  QS_CHECK(!qs::model::QuantizedCheckpoint::is_quantized_checkpoint(dir))
      << dir << " is already a qserve quantized checkpoint; quantize the FP (Hugging Face) model instead";
  std::ifstream f(p);
  nlohmann::json j;
  try {
    f >> j;
  } catch (const std::exception& e) {
    QS_FAIL() << p.string() << ": invalid JSON (" << e.what() << ")";
  }
  std::string arch = "(none)";
  if (j.contains("architectures") && j["architectures"].is_array() && !j["architectures"].empty())
    arch = j["architectures"][0].get<std::string>();
  QS_CHECK(arch == "LlamaForCausalLM" || arch == "MistralForCausalLM" || arch == "Qwen2ForCausalLM")
      << "qserve quantize supports Llama-family checkpoints (LlamaForCausalLM, MistralForCausalLM, "
         "Qwen2ForCausalLM); "
      << dir << " is " << arch;
  return j;
}

// Parameters from the config alone (the small-model calibration default is decided before loading anything).
int64_t parameters_of(const qs::io::ModelConfig& c) {
  const int64_t h = c.hidden_size;
  int64_t n = c.vocab_size * h * (c.tie_word_embeddings ? 1 : 2) + h;
  n += int64_t(c.num_layers) * (2 * h + h * (c.q_size() + 2 * c.kv_size()) + c.q_size() * h +
                                3 * h * c.intermediate_size);
  return n;
}

// Removes the resume state folder's files (the names streaming.cc writes) and the folder if then empty.
void remove_partial(const fs::path& dir, bool only_if_empty) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return;
  if (!only_if_empty)
    for (const auto& e : fs::directory_iterator(dir, ec)) {
      const std::string n = e.path().filename().string();
      if (n == "state.json" || n.starts_with("hidden-") || n.starts_with("layer-")) fs::remove(e.path(), ec);
    }
  fs::remove(dir, ec);  // only succeeds when empty
}

void run(Args a) {
  QoqOptions& opt = a.opt;
  opt.variant = a.variant == "per-channel" ? qs::WeightFormat::kW4A8PerChannel
                                           : qs::WeightFormat::kW4A8G128;
  if (a.rtn) {
    const QoqOptions r = QoqOptions::rtn(opt.variant);
    opt.rotate = r.rotate, opt.smooth_attn = r.smooth_attn, opt.smooth_down = r.smooth_down;
    opt.reorder = r.reorder, opt.clip = r.clip, opt.gptq = r.gptq;
  }
  if (a.no_rotate) opt.rotate = false;
  if (a.no_smooth_attn) opt.smooth_attn = false;
  if (a.no_smooth_down) opt.smooth_down = false;
  if (a.no_reorder) opt.reorder = false;
  if (a.no_clip) opt.clip = false;
  if (a.no_gptq) opt.gptq = false;
  opt.progress = !a.quiet;
  {
    std::string why;
    const bool gpu = a.device != "cpu" && qs::quant::qoq::cuda_calibration_available(&why);
    QS_CHECK(a.device != "cuda" || gpu) << "--device cuda: " << why;
    opt.cuda = gpu;
  }
  opt.propagate_quantized = a.propagate == "quantized";
  opt.cancelled = [] { return g_interrupted != 0; };
  signal(SIGINT, on_signal);
  signal(SIGTERM, on_signal);
  QS_CHECK(!(a.smooth_attn_search && a.smooth_attn_alpha >= 0.0f))
      << "give --smooth-attn-search or --smooth-attn-alpha, not both";
  if (a.smooth_attn_alpha >= 0.0f) {  // a fixed exponent instead of the search
    opt.smooth_attn_search = false;
    opt.smooth_attn_alpha = a.smooth_attn_alpha;
  }
  if (a.smooth_attn_per_layer) opt.smooth_attn_per_head = false;
  QS_CHECK((opt.smooth_down_alpha < 0) == (opt.smooth_down_beta < 0))
      << "give both --smooth-down-alpha and --smooth-down-beta, or neither";

  // Cheap checks first: architecture, calibration text, output location.
  const nlohmann::json hf = read_hf_config(a.model);
  if (a.calib.empty()) a.calib = qs::data_dir() + "/text/calibration.txt";
  QS_CHECK(fs::is_regular_file(a.calib)) << "calibration text " << a.calib << " not found (--calib FILE)";
  const qs::io::ModelConfig cfg = qs::io::parse_model_config(hf);
  qs::quant::qoq::check_quantizable(cfg, opt);
  // The resume state lives beside --out (DIR.qserve-partial), so it is as far from --model as --out is.
  const fs::path partial = fs::absolute(a.out).lexically_normal().string() + ".qserve-partial";
  {
    std::error_code ec;
    const fs::path m = fs::weakly_canonical(fs::absolute(a.model), ec);
    const fs::path p = fs::weakly_canonical(partial, ec);
    QS_CHECK(m.string().rfind(p.string() + "/", 0) != 0 && m != p)
        << "--model " << a.model << " is inside " << partial.string() << ", the resume folder of --out " << a.out;
  }
  const fs::path tmp = qs::cli::prepare_output(a.model, a.out, a.force);
  bool streamed = false;
  try {
    const bool small = parameters_of(cfg) < 1000000000LL;
    opt.calib_samples = a.samples > 0 ? a.samples : (small ? 16 : 128);
    opt.calib_len = a.len > 0 ? a.len : (small ? 512 : 1024);
    const auto tok = qs::tokenizer::Tokenizer::from_dir(a.model);
    qs::tokenizer::check_fits_model_vocab(tok, cfg.vocab_size, cfg.bos_token_ids, cfg.eos_token_ids, a.model);
    const auto calib =
        qs::quant::qoq::sample_calibration_file(tok, a.calib, opt.calib_samples, opt.calib_len, opt.calib_seed);
    std::fprintf(stderr, "qserve quantize: %s -> %s (%s), calibration %d x %d tokens from %s\n", a.model.c_str(),
                 a.out.c_str(), a.variant.c_str(), opt.calib_samples, opt.calib_len, a.calib.c_str());
    std::fprintf(stderr, "QoQ: %s\n", opt.to_json().dump().c_str());
    // The optimized CPU backend by default (same ops, SIMD linear/attention; ref-cpu is the scalar ground truth).
    const auto& backend = a.backend == "ref-cpu" ? qs::backends::ref_cpu_backend() : qs::backends::cpu_backend();
    const std::string source = fs::absolute(a.model).string();
    qs::quant::qoq::QoqResult result;
    if (a.in_memory) {
      auto model = qs::model::Model::load(a.model, backend);
      result = qs::quant::qoq::run_qoq(*model, calib, opt);
      qs::quant::qoq::make_checkpoint(*model, result, hf, source).write(tmp.string());
    } else {
      qs::quant::qoq::StreamingOptions so;
      so.state_dir = partial.string();
      so.fresh = a.force;
      so.save_every_seconds = 120;  // the 2 GB of hidden states of an 8B model are not worth writing every layer
      if (const char* e = std::getenv("QSERVE_QUANTIZE_STOP_AFTER_LAYER"); e && *e) {
        char* end = nullptr;
        const long k = std::strtol(e, &end, 10);
        QS_CHECK(*end == 0 && k >= 0 && k < (1 << 20))
            << "QSERVE_QUANTIZE_STOP_AFTER_LAYER=" << e << " is not a layer count";
        so.stop_after_layers = int(k);
      }
      streamed = true;
      auto r = qs::quant::qoq::run_qoq_streaming(a.model, backend, calib, opt, so);
      result = std::move(r.result);
      const auto t_write = std::chrono::steady_clock::now();
      qs::quant::qoq::make_checkpoint(r.fp, result, cfg.num_layers, hf, source).write(tmp.string());
      std::fprintf(stderr, "qserve quantize: checkpoint written in %.1f s\n",
                   std::chrono::duration<double>(std::chrono::steady_clock::now() - t_write).count());
    }
    for (const char* f : {"tokenizer.json", "tokenizer_config.json", "generation_config.json", "chat_template.jinja",
                          "special_tokens_map.json", "tokenizer.model"})
      if (fs::exists(fs::path(a.model) / f)) fs::copy_file(fs::path(a.model) / f, tmp / f);
    // Publish: DIR appears only now, complete (a previous qserve output there is replaced; see output_dir.h).
    qs::cli::publish_output(tmp, a.out, a.force);
    if (streamed) remove_partial(partial, false);
    const fs::path dst = fs::absolute(a.out).lexically_normal();
    std::fprintf(stderr, "%s", qs::quant::qoq::format_report(result).c_str());
    if (opt.cuda)
      std::fprintf(stderr, "peak host memory %.2f GiB (getrusage maxrss); peak GPU memory %.2f GiB (in use on the "
                   "device, sampled); calibration on the GPU\n",
                   double(qs::quant::qoq::peak_host_memory_bytes()) / double(1LL << 30),
                   double(qs::quant::qoq::cuda_peak_memory_bytes()) / double(1LL << 30));
    else
      std::fprintf(stderr, "peak host memory %.2f GiB (getrusage maxrss); calibration on the CPU (%s backend)\n",
                   double(qs::quant::qoq::peak_host_memory_bytes()) / double(1LL << 30), a.backend.c_str());
    qs::CheckedWriter out(stdout, "standard output");
    out.printf("wrote %s\n", dst.string().c_str());
    out.flush();
  } catch (...) {
    qs::cli::remove_created_output(tmp);
    if (streamed) remove_partial(partial, true);  // kept when it holds finished layers (resume)
    throw;
  }
}

qs::cli::CommandRegistrar reg(
    "quantize", "Quantize a Hugging Face Llama-family checkpoint to W4A8KV4 with QoQ", [](CLI::App* sub) {
      auto a = std::make_shared<Args>();
      sub->add_option("--model", a->model, "Hugging Face checkpoint directory")->required();
      sub->add_option("--out", a->out, "output directory (written atomically)")->required();
      sub->add_option("--variant", a->variant, "per-channel or g128")
          ->required()
          ->check(CLI::IsMember({"per-channel", "g128"}));
      sub->add_option("--calib", a->calib, "calibration text (default: <data>/text/calibration.txt)");
      sub->add_option("--calib-samples", a->samples, "calibration windows (default 128; 16 below 1B parameters)")
          ->check(CLI::PositiveNumber);
      sub->add_option("--calib-len", a->len, "tokens per window (default 1024; 512 below 1B parameters)")
          ->check(CLI::Range(2, 1 << 20));
      qs::cli::add_seed_option(sub, "--calib-seed", &a->opt.calib_seed, "window sampling seed, 0 .. 2^64-1 (0)");
      sub->add_flag("--no-rotate", a->no_rotate, "no RMSNorm folding / Hadamard rotations");
      auto* no_sa = sub->add_flag("--no-smooth-attn", a->no_smooth_attn, "no SmoothAttention");
      auto* no_sd = sub->add_flag("--no-smooth-down", a->no_smooth_down, "no down_proj smoothing");
      sub->add_flag("--no-reorder", a->no_reorder, "no channel reordering (g128)");
      auto* no_clip = sub->add_flag("--no-clip", a->no_clip, "no clipping search (per-channel)");
      auto* no_gptq = sub->add_flag("--no-gptq", a->no_gptq, "round to nearest instead of GPTQ");
      auto* rtn = sub->add_flag("--rtn", a->rtn, "all of the above: plain round-to-nearest");
      // A setting of a step that another flag switches off is a contradiction: refused, not silently ignored.
      sub->add_flag("--smooth-attn-search", a->smooth_attn_search,
                    "search the SmoothAttention exponent per layer and KV head by the KV4 attention-output error "
                    "(the default)");
      sub->add_option("--smooth-attn-alpha", a->smooth_attn_alpha,
                      "fixed SmoothAttention exponent for every layer (instead of the search; the paper's 0.5)")
          ->check(CLI::Range(0.0, 1.0))
          ->excludes(no_sa)
          ->excludes(rtn);
      sub->add_flag("--smooth-attn-per-layer", a->smooth_attn_per_layer,
                    "search one SmoothAttention exponent per layer instead of one per KV head");
      sub->add_option("--smooth-attn-windows", a->opt.smooth_attn_windows,
                      "calibration windows in the SmoothAttention search sample (4)")
          ->check(CLI::PositiveNumber);
      sub->add_option("--smooth-attn-queries", a->opt.smooth_attn_queries,
                      "query positions per window in the SmoothAttention search sample (128)")
          ->check(CLI::PositiveNumber);
      sub->add_option("--smooth-down-alpha", a->opt.smooth_down_alpha,
                      "down_proj smoothing activation exponent (default 0.1 per-channel, 0.3 g128)")
          ->check(CLI::Range(0.0, 1.0))
          ->excludes(no_sd)
          ->excludes(rtn);
      sub->add_option("--smooth-down-beta", a->opt.smooth_down_beta,
                      "down_proj smoothing weight exponent (default 0.9 per-channel, 0.7 g128)")
          ->check(CLI::Range(0.0, 1.0))
          ->excludes(no_sd)
          ->excludes(rtn);
      sub->add_flag("--smooth-down-search", a->opt.smooth_down_search,
                    "grid-search the down_proj smoothing exponents per layer by MLP output MSE")
          ->excludes(no_sd)
          ->excludes(rtn);
      sub->add_option("--hessian-stride", a->opt.hessian_stride, "GPTQ Hessians from every n-th token (1)")
          ->check(CLI::PositiveNumber)
          ->excludes(no_gptq)
          ->excludes(rtn);
      sub->add_option("--sample-rows", a->opt.sample_rows,
                      "tokens kept per linear input for clipping, smoothing search and the report (128)")
          ->check(CLI::PositiveNumber);
      sub->add_option("--clip-steps", a->opt.clip_steps, "clipping ratios from 1.0 down to 0.2 (80)")
          ->check(CLI::PositiveNumber)
          ->excludes(no_clip)
          ->excludes(rtn);
      sub->add_option("--propagate", a->propagate,
                      "next layer's calibration input: quantized (outputs with dequantized weights, default) or fp")
          ->check(CLI::IsMember({"fp", "quantized"}));
      sub->add_option("--device", a->device,
                      "calibration device: auto (the GPU when one is present), cpu, or cuda (layer forward, "
                      "Hessians and GPTQ on the GPU)")
          ->check(CLI::IsMember({"auto", "cpu", "cuda"}));
      sub->add_option("--backend", a->backend, "calibration backend: cpu (optimized, default) or ref-cpu")
          ->check(CLI::IsMember({"cpu", "ref-cpu"}));
      sub->add_flag("--force", a->force,
                    "replace a previous qserve quantize output at --out (and discard a resume state in "
                    "DIR.qserve-partial that does not match)");
      sub->add_flag("--in-memory", a->in_memory,
                    "load the whole FP model (the reference path) instead of streaming it layer by layer");
      sub->add_flag("--quiet", a->quiet, "no progress bar");
      sub->callback([a] { run(*a); });
    });

}  // namespace
