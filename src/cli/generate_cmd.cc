// `qserve generate --model DIR --prompt TEXT [...]`: loads a checkpoint (Hugging Face FP, or a qserve quantized
// one through quant/eval/model_loader: integer reference linears, KV4 by default when it was made for it) on the
// reference CPU backend, encodes the prompt with the checkpoint's tokenizer, and streams the generated text to
// stdout as tokens are produced (IncrementalDecoder: never half a UTF-8 character). --chat renders the prompt as
// one user message with the model's chat template. The prompt is echoed first unless --chat or --no-echo.
// Stops on the tokenizer's EOS ids (unless --ignore-eos), --stop strings or --max-tokens. Timing (prefill and
// decode tokens/s) goes to stderr at the end.
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "cli/command.h"
#include "model/model.h"
#include "quant/eval/model_loader.h"
#include "runtime/generate.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/incremental_decoder.h"
#include "tokenizer/tokenizer.h"

namespace {

struct Options {
  std::string model, prompt;
  int max_tokens = 128;
  float temperature = 0.0f, top_p = 1.0f, repetition_penalty = 1.0f;
  int top_k = 0;
  uint64_t seed = 0;
  bool chat = false, kv4 = false, fp_kv = false, ignore_eos = false, no_echo = false;
  std::vector<std::string> stop;
};

void run(const Options& o) {
  // An HF checkpoint (FP32 weights) or a qserve quantized checkpoint (exact integer reference linears).
  qs::quant::eval::LoadedModel loaded = qs::quant::eval::load_for_eval(o.model, {});
  QS_CHECK(!loaded.tokenizer_dir.empty()) << "no tokenizer.json found for " << o.model;
  auto tok = qs::tokenizer::Tokenizer::from_dir(loaded.tokenizer_dir);
  qs::model::Model* model = loaded.model.get();

  std::vector<int> ids;
  if (o.chat) {
    // The model's chat template (one user message + the assistant header); the template writes BOS itself.
    const std::string text = qs::tokenizer::apply_chat_template(tok, {{"user", o.prompt}}, true);
    ids = tok.encode(text, /*add_special_tokens=*/false);
  } else {
    ids = tok.encode(o.prompt, /*add_special_tokens=*/true);
  }
  QS_CHECK(!ids.empty()) << "the prompt encodes to no tokens";

  qs::runtime::GenerateOptions g;
  g.max_new_tokens = o.max_tokens;
  g.sampling.temperature = o.temperature;
  g.sampling.top_k = o.top_k;
  g.sampling.top_p = o.top_p;
  g.sampling.repetition_penalty = o.repetition_penalty;
  g.sampling.seed = o.seed;
  g.stop_strings = o.stop;
  // KV4 when asked, or when the quantized checkpoint was made for a 4-bit KV cache (unless --fp-kv).
  const bool kv4 = o.kv4 || (loaded.kv_bits == 4 && !o.fp_kv);
  g.kv_mode = kv4 ? qs::model::KvMode::kKv4 : qs::model::KvMode::kFp32;
  if (!o.ignore_eos) {
    for (int id : tok.eos_ids()) g.eos_ids.push_back(id);
    for (int id : model->config().eos_token_ids) g.eos_ids.push_back(id);
  }

  qs::model::validate(g.sampling);
  if (!o.chat && !o.no_echo) {
    std::fputs(o.prompt.c_str(), stdout);
    std::fflush(stdout);
  }
  // A plain completion continues the echoed prompt's text (SentencePiece tokenizers must keep the leading space of
  // the first generated word); a chat reply starts a new text.
  auto dec = std::make_shared<qs::tokenizer::IncrementalDecoder>(tok, /*skip_special_tokens=*/true,
                                                                 /*continues_text=*/!o.chat);
  qs::runtime::GenerateStats st;
  const std::vector<int32_t> prompt(ids.begin(), ids.end());
  auto r = qs::runtime::generate(
      *model, prompt, g, [dec](int32_t id) { return dec->push(id); },
      [](size_t, const std::string& piece) {
        std::fputs(piece.c_str(), stdout);
        std::fflush(stdout);
      },
      &st);
  if (r.reason != qs::runtime::StopReason::kStopString) std::fputs(dec->flush().c_str(), stdout);
  std::fputs("\n", stdout);
  std::fflush(stdout);
  std::fprintf(stderr,
               "[%s] prompt %lld tokens, generated %lld tokens (stop: %s) | prefill %.3f s (%.1f tok/s), decode "
               "%.3f s (%.2f tok/s), overall %.2f tok/s | %s, %s KV, %s backend\n",
               o.model.c_str(), (long long)st.prompt_tokens, (long long)st.generated_tokens,
               qs::runtime::stop_reason_name(r.reason), st.prefill_seconds,
               st.prefill_seconds > 0 ? double(st.prompt_tokens) / st.prefill_seconds : 0.0, st.decode_seconds,
               st.decode_seconds > 0 ? double(st.generated_tokens - 1) / st.decode_seconds : 0.0,
               st.tokens_per_second(), loaded.description.c_str(), qs::model::kv_mode_name(g.kv_mode), model->backend().name().c_str());
}

qs::cli::CommandRegistrar reg("generate", "Generate text from a prompt (reference CPU backend)", [](CLI::App* sub) {
  auto o = std::make_shared<Options>();
  sub->add_option("--model,-m", o->model, "checkpoint folder (config.json, safetensors, tokenizer.json)")->required();
  sub->add_option("--prompt,-p", o->prompt, "prompt text")->required();
  sub->add_option("--max-tokens,-n", o->max_tokens, "maximum number of generated tokens (default 128)");
  sub->add_option("--temperature,-t", o->temperature, "sampling temperature; 0 = greedy (default 0)");
  sub->add_option("--top-p", o->top_p, "nucleus sampling mass in (0, 1] (default 1 = off)");
  sub->add_option("--top-k", o->top_k, "keep the k most likely tokens (default 0 = off)");
  sub->add_option("--repetition-penalty", o->repetition_penalty, "CTRL-style penalty on seen tokens (default 1 = off)");
  sub->add_option("--seed", o->seed, "random seed for sampling (default 0)");
  sub->add_option("--stop", o->stop, "stop string (repeatable)");
  sub->add_flag("--chat", o->chat, "wrap the prompt as one user message in the model's chat format");
  sub->add_flag("--kv4", o->kv4, "quantize the KV cache to 4 bits (W4A8KV4 reference KV path)");
  sub->add_flag("--fp-kv", o->fp_kv, "keep the KV cache in FP32 even for a KV4 quantized checkpoint");
  sub->add_flag("--ignore-eos", o->ignore_eos, "do not stop at EOS tokens");
  sub->add_flag("--no-echo", o->no_echo, "do not print the prompt before the generated text");
  sub->callback([o] { run(*o); });
});

}  // namespace
