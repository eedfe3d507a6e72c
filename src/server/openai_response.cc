// OpenAI response bodies, chunks and logprobs (see openai_response.h).
#include "server/openai_response.h"

#include <cmath>
#include <random>

namespace qs::server {

void ChoiceResult::add(const runtime::RequestOutput& o) {
  text += o.text;
  tokens.insert(tokens.end(), o.tokens.begin(), o.tokens.end());
  token_logprobs.insert(token_logprobs.end(), o.token_logprobs.begin(), o.token_logprobs.end());
  top_logprobs.insert(top_logprobs.end(), o.top_logprobs.begin(), o.top_logprobs.end());
  if (o.finish != runtime::FinishReason::kNone) {
    finish = o.finish;
    error = o.error;
  }
  prompt_tokens = o.prompt_tokens;
  completion_tokens = o.completion_tokens;
  cached_prompt_tokens = o.cached_prompt_tokens;
}

ojson finish_reason_json(runtime::FinishReason r) {
  switch (r) {
    case runtime::FinishReason::kStop: return "stop";
    case runtime::FinishReason::kLength: return "length";
    case runtime::FinishReason::kAbort: return "abort";
    case runtime::FinishReason::kError: return "error";
    default: return nullptr;
  }
}

ojson usage_json(int64_t prompt_tokens, int64_t completion_tokens, int64_t cached_prompt_tokens) {
  ojson u = ojson::object();
  u["prompt_tokens"] = prompt_tokens;
  u["completion_tokens"] = completion_tokens;
  u["total_tokens"] = prompt_tokens + completion_tokens;
  u["prompt_tokens_details"] = ojson{{"cached_tokens", cached_prompt_tokens}};
  return u;
}

std::string make_request_id(Endpoint e) {
  thread_local std::mt19937_64 rng(std::random_device{}());
  static const char* hex = "0123456789abcdef";
  std::string id = e == Endpoint::kChat ? "chatcmpl-" : "cmpl-";
  for (int i = 0; i < 24; ++i) id += hex[rng() & 15];
  return id;
}

std::string dump(const ojson& j) { return j.dump(-1, ' ', false, ojson::error_handler_t::replace); }

std::string sse_event(const ojson& j) { return "data: " + dump(j) + "\n\n"; }

std::string ResponseBuilder::token_bytes(int32_t id) const {
  if (!tok_ || id < 0 || id >= tok_->vocab_size()) return "";
  tokenizer::DecodeState st;
  std::string out;
  tok_->append_token_bytes(id, /*skip_special_tokens=*/false, st, out);
  return out;
}

ojson ResponseBuilder::logprobs_json(const std::vector<int32_t>& tokens, const std::vector<runtime::TokenLogprob>& lps,
                                     const std::vector<std::vector<runtime::TokenLogprob>>& tops, size_t first,
                                     size_t n, int64_t* text_offset) const {
  if (logprobs_ < 0) return nullptr;
  auto lp_value = [](float v) { return std::isfinite(v) ? ojson(v) : ojson(-9999.0); };
  if (endpoint_ == Endpoint::kChat) {
    ojson content = ojson::array();
    for (size_t i = first; i < first + n && i < tokens.size(); ++i) {
      const std::string b = token_bytes(tokens[i]);
      ojson e = ojson::object();
      e["token"] = b;
      e["logprob"] = i < lps.size() ? lp_value(lps[i].logprob) : ojson(nullptr);
      e["bytes"] = ojson::array();
      for (char c : b) e["bytes"].push_back(int(uint8_t(c)));
      ojson top = ojson::array();
      if (i < tops.size()) {
        for (const auto& t : tops[i]) {
          const std::string tb = token_bytes(t.id);
          ojson te = {{"token", tb}, {"logprob", lp_value(t.logprob)}, {"bytes", ojson::array()}};
          for (char c : tb) te["bytes"].push_back(int(uint8_t(c)));
          top.push_back(std::move(te));
        }
      }
      e["top_logprobs"] = std::move(top);
      content.push_back(std::move(e));
    }
    return ojson{{"content", content}};
  }
  ojson toks = ojson::array(), vals = ojson::array(), top = ojson::array(), offs = ojson::array();
  for (size_t i = first; i < first + n && i < tokens.size(); ++i) {
    const std::string b = token_bytes(tokens[i]);
    toks.push_back(b);
    vals.push_back(i < lps.size() ? lp_value(lps[i].logprob) : ojson(nullptr));
    if (logprobs_ > 0 && i < tops.size()) {
      ojson m = ojson::object();
      for (const auto& t : tops[i]) m[token_bytes(t.id)] = lp_value(t.logprob);
      top.push_back(std::move(m));
    } else {
      top.push_back(nullptr);
    }
    offs.push_back(text_offset ? *text_offset : 0);
    if (text_offset) *text_offset += int64_t(b.size());
  }
  return ojson{{"tokens", toks}, {"token_logprobs", vals}, {"top_logprobs", top}, {"text_offset", offs}};
}

ojson ResponseBuilder::envelope(const char* object) const {
  ojson j = ojson::object();
  j["id"] = id_;
  j["object"] = object;
  j["created"] = created_;
  j["model"] = model_;
  return j;
}

ojson ResponseBuilder::full_response(const std::vector<ChoiceResult>& choices, const std::vector<std::string>& prefix,
                                     const ojson& usage) const {
  const bool chat = endpoint_ == Endpoint::kChat;
  ojson j = envelope(chat ? "chat.completion" : "text_completion");
  ojson arr = ojson::array();
  for (size_t i = 0; i < choices.size(); ++i) {
    const ChoiceResult& c = choices[i];
    const std::string pre = i < prefix.size() ? prefix[i] : std::string();
    int64_t offset = int64_t(pre.size());
    ojson lp = logprobs_json(c.tokens, c.token_logprobs, c.top_logprobs, 0, c.tokens.size(), &offset);
    ojson e = ojson::object();
    e["index"] = i;
    if (chat) {
      e["message"] = ojson{{"role", "assistant"}, {"content", pre + c.text}};
    } else {
      e["text"] = pre + c.text;
    }
    e["logprobs"] = std::move(lp);
    e["finish_reason"] = finish_reason_json(c.finish);
    arr.push_back(std::move(e));
  }
  j["choices"] = std::move(arr);
  j["usage"] = usage;
  return j;
}

ojson ResponseBuilder::chunk(int index, const std::string& text, const ojson& logprobs, runtime::FinishReason finish,
                             bool role_only) const {
  const bool chat = endpoint_ == Endpoint::kChat;
  ojson j = envelope(chat ? "chat.completion.chunk" : "text_completion");
  ojson e = ojson::object();
  e["index"] = index;
  if (chat) {
    ojson delta = ojson::object();
    if (role_only) {
      delta["role"] = "assistant";
      delta["content"] = "";
    } else if (!text.empty()) {
      delta["content"] = text;
    }
    e["delta"] = std::move(delta);
  } else {
    e["text"] = text;
  }
  e["logprobs"] = logprobs;
  e["finish_reason"] = finish_reason_json(finish);
  j["choices"] = ojson::array({std::move(e)});
  return j;
}

ojson ResponseBuilder::usage_chunk(const ojson& usage) const {
  ojson j = envelope(endpoint_ == Endpoint::kChat ? "chat.completion.chunk" : "text_completion");
  j["choices"] = ojson::array();
  j["usage"] = usage;
  return j;
}

}  // namespace qs::server
