// `qserve generate --model DIR --prompt TEXT [...]`: loads a checkpoint (Hugging Face FP, or a qserve quantized
// one: KV4 by default when it was made for it) into an executor (cli/executor_factory.h: --device auto picks the
// GPU runner when a GPU is present, else the exact CPU reference executor), and runs the prompt through the serving engine (runtime/engine.h:
// paged KV pool, scheduler, incremental detokenization, stop strings), streaming the text to stdout as tokens
// are produced (never half a UTF-8 character). --chat renders the prompt as one user message with the model's
// chat template. The prompt is echoed first unless --chat or --no-echo. Stops on the tokenizer's EOS ids
// (unless --ignore-eos), --stop strings or --max-tokens. Timing (prefill = time to the first token, and decode
// tokens/s) goes to stderr at the end.
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "cli/command.h"
#include "cli/executor_factory.h"
#include "cli/seed_option.h"
#include "core/file_io.h"
#include "model/model.h"
#include "runtime/engine.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace {

struct Options {
  std::string model, prompt, prompt_file;
  int max_tokens = 128;
  float temperature = 0.0f, top_p = 1.0f, repetition_penalty = 1.0f;
  int top_k = 0;
  uint64_t seed = 0;
  bool chat = false, ignore_eos = false, no_echo = false;
  std::vector<std::string> stop;
  qs::cli::ExecutorFlags exec;
};

void run(Options o) {
  QS_CHECK(!o.prompt.empty() || !o.prompt_file.empty())
      << "give the prompt with --prompt TEXT or --prompt-file FILE ('-': standard input)";
  if (o.prompt_file == "-") {
    std::string text;
    char buf[65536];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, stdin)) > 0) {
      text.append(buf, n);
      QS_CHECK(text.size() <= (size_t(64) << 20)) << "--prompt-file -: the prompt exceeds 64 MiB";
    }
    o.prompt = std::move(text);
  } else if (!o.prompt_file.empty()) {
    o.prompt = qs::read_file_checked(o.prompt_file, "prompt file", size_t(64) << 20);
  }
  QS_CHECK(!o.prompt.empty()) << "the prompt is empty";
  qs::model::SamplingParams sp;
  sp.temperature = o.temperature;
  sp.top_k = o.top_k;
  sp.top_p = o.top_p;
  sp.repetition_penalty = o.repetition_penalty;
  sp.seed = o.seed;
  qs::model::validate(sp);  // before anything is loaded or printed
  QS_CHECK(o.max_tokens >= 1) << "--max-tokens must be >= 1, got " << o.max_tokens;

  // An HF checkpoint or a qserve quantized checkpoint, on the device the flags pick (cli/executor_factory.h):
  // the exact CPU reference executor, or the GPU runner. One sequence; the prompt is prefilled in one chunk.
  qs::cli::ExecutorFlags f = o.exec;
  f.max_batch_seqs = 1;
  qs::cli::LoadedExecutor le = qs::cli::load_executor(o.model, f);
  QS_CHECK(le.tokenizer) << "no tokenizer.json found for " << o.model;
  const auto tok = le.tokenizer;

  std::vector<int> ids;
  if (o.chat) {
    // The model's chat template (one user message + the assistant header); the template writes BOS itself.
    const std::string text = qs::tokenizer::apply_chat_template(*tok, {{"user", o.prompt}}, true);
    ids = tok->encode(text, /*add_special_tokens=*/false);
  } else {
    ids = tok->encode(o.prompt, /*add_special_tokens=*/true);
  }
  QS_CHECK(!ids.empty()) << "the prompt encodes to no tokens";
  qs::model::Executor& exec = *le.executor;
  QS_CHECK(int64_t(ids.size()) < exec.max_context())
      << "the prompt has " << ids.size() << " tokens; the context holds " << exec.max_context();
  const std::string desc = le.description;

  qs::runtime::EngineOptions opts;
  opts.max_num_seqs = 1;
  opts.max_num_batched_tokens = exec.max_batch_tokens();
  qs::runtime::Engine engine(exec, tok, opts);

  qs::runtime::RequestParams p;
  p.prompt.assign(ids.begin(), ids.end());
  p.sampling = sp;
  p.max_tokens = o.max_tokens;
  p.stop = o.stop;
  p.ignore_eos = o.ignore_eos;
  // A plain completion continues the echoed prompt's text (SentencePiece tokenizers must keep the leading space
  // of the first generated word); a chat reply starts a new text.
  p.continues_text = !o.chat;

  if (!o.chat && !o.no_echo) {
    std::fputs(o.prompt.c_str(), stdout);
    std::fflush(stdout);
  }
  using Clock = std::chrono::steady_clock;
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  qs::runtime::RequestOutput last;
  Clock::time_point first_token;
  int64_t generated = 0;
  const auto t0 = Clock::now();
  engine.submit(std::move(p), [&](const qs::runtime::RequestOutput& out) {
    if (generated == 0 && !out.tokens.empty()) first_token = Clock::now();
    generated += int64_t(out.tokens.size());
    std::fputs(out.text.c_str(), stdout);
    std::fflush(stdout);
    if (out.finish != qs::runtime::FinishReason::kNone) {
      std::lock_guard<std::mutex> lk(mu);
      last = out;
      done = true;
      cv.notify_all();
    }
  });
  {
    std::unique_lock<std::mutex> lk(mu);
    cv.wait(lk, [&] { return done; });
  }
  const auto t1 = Clock::now();
  std::fputs("\n", stdout);
  std::fflush(stdout);
  QS_CHECK(last.finish != qs::runtime::FinishReason::kError) << "generation failed: " << last.error;
  const double prefill = generated ? std::chrono::duration<double>(first_token - t0).count() : 0.0;
  const double decode = generated ? std::chrono::duration<double>(t1 - first_token).count() : 0.0;
  const double total = prefill + decode;
  std::fprintf(stderr,
               "[%s] prompt %zu tokens, generated %lld tokens (stop: %s) | prefill %.3f s (%.1f tok/s), decode "
               "%.3f s (%.2f tok/s), overall %.2f tok/s | %s\n",
               o.model.c_str(), ids.size(), (long long)generated, qs::runtime::finish_reason_name(last.finish),
               prefill, prefill > 0 ? double(ids.size()) / prefill : 0.0, decode,
               decode > 0 ? double(generated - 1) / decode : 0.0, total > 0 ? double(generated) / total : 0.0,
               desc.c_str());
}

qs::cli::CommandRegistrar reg("generate", "Generate text from a prompt (reference CPU executor, serving engine)",
                              [](CLI::App* sub) {
  auto o = std::make_shared<Options>();
  sub->add_option("--model,-m", o->model, "checkpoint folder (config.json, safetensors, tokenizer.json)")->required();
  auto* prompt = sub->add_option("--prompt,-p", o->prompt, "prompt text");
  sub->add_option("--prompt-file", o->prompt_file, "read the prompt from a file ('-': standard input)")
      ->excludes(prompt);
  sub->add_option("--max-tokens,-n", o->max_tokens, "maximum number of generated tokens (default 128)");
  sub->add_option("--temperature,-t", o->temperature, "sampling temperature; 0 = greedy (default 0)");
  sub->add_option("--top-p", o->top_p, "nucleus sampling mass in (0, 1] (default 1 = off)");
  sub->add_option("--top-k", o->top_k, "keep the k most likely tokens (default 0 = off)");
  sub->add_option("--repetition-penalty", o->repetition_penalty, "CTRL-style penalty on seen tokens (default 1 = off)");
  qs::cli::add_seed_option(sub, "--seed", &o->seed, "random seed for sampling, 0 .. 2^64-1 (default 0)");
  sub->add_option("--stop", o->stop, "stop string (repeatable)");
  sub->add_flag("--chat", o->chat, "wrap the prompt as one user message in the model's chat format");
  sub->add_flag("--ignore-eos", o->ignore_eos, "do not stop at EOS tokens");
  sub->add_flag("--no-echo", o->no_echo, "do not print the prompt before the generated text");
  qs::cli::add_executor_flags(sub, &o->exec);
  sub->callback([o] { run(*o); });
});

}  // namespace
