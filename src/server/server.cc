// The OpenAI-compatible HTTP server: routing, auth, validation and the generation handlers (see server.h).
#include "server/server.h"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <condition_variable>
#include <cstdio>
#include <ctime>
#include <limits>
#include <mutex>
#include <random>
#include <thread>

#include "server/api_error.h"
#include "server/http_transport.h"
#include "server/openai_request.h"
#include "server/openai_response.h"
#include "server/request_session.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/incremental_decoder.h"

namespace qs::server {
namespace {

using Clock = std::chrono::steady_clock;

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  return s;
}

// Compares in time that depends only on the length of `secret`.
bool constant_time_equal(const std::string& secret, const std::string& given) {
  unsigned char diff = secret.size() != given.size() ? 1 : 0;
  for (size_t i = 0; i < secret.size(); ++i)
    diff |= static_cast<unsigned char>(secret[i] ^ (i < given.size() ? given[i] : 0));
  return diff == 0;
}

std::string default_message(int status) {
  switch (status) {
    case 400: return "bad request";
    case 404: return "not found";
    case 405: return "method not allowed";
    case 413: return "request body too large";
    case 414: return "request URI too long";
    case 415: return "unsupported media type";
    default: return "HTTP error " + std::to_string(status);
  }
}

uint64_t random_seed() {
  thread_local std::mt19937_64 rng(std::random_device{}());
  return rng();
}

}  // namespace

struct Server::Impl {
  ServerOptions opts;
  GenerationBackend& backend;
  std::shared_ptr<const tokenizer::Tokenizer> tok;
  std::unique_ptr<tokenizer::ChatTemplate> chat_template;
  std::string chat_template_error;
  bool ids_mode = false;  // !opts.engine_text or no tokenizer (see ServerOptions::engine_text)
  HttpTransport http;
  std::thread thread;
  int bound_port = -1;
  std::atomic<bool> draining{false};
  const int64_t started_at = int64_t(std::time(nullptr));

  mutable std::mutex mu;
  std::condition_variable idle_cv;
  HttpCounters counters;

  // Counts a generation request as in flight for its lifetime (a streaming one until its last byte).
  struct InFlight {
    Impl* impl;
    explicit InFlight(Impl* i) : impl(i) {
      std::lock_guard<std::mutex> lk(impl->mu);
      ++impl->counters.in_flight;
    }
    ~InFlight() {
      {
        std::lock_guard<std::mutex> lk(impl->mu);
        --impl->counters.in_flight;
      }
      impl->idle_cv.notify_all();
    }
    InFlight(const InFlight&) = delete;
    InFlight& operator=(const InFlight&) = delete;
  };

  // What a streaming response needs across provider calls (all on the connection's thread).
  struct StreamState {
    StreamState(Impl* i, GenerationBackend& b, ResponseBuilder rb) : flight(i), session(b), builder(std::move(rb)) {}
    InFlight flight;
    RequestSession session;
    ResponseBuilder builder;
    std::vector<ChoiceResult> results;
    std::vector<int64_t> text_offsets;
    std::vector<std::string> echo;  // completions echo: the prompt text of each choice
    // Ids mode: each choice's text, decoded here (null without a tokenizer).
    std::vector<std::unique_ptr<tokenizer::IncrementalDecoder>> decoders;
    bool token_ids = false;  // "token_ids" in chunks / choices (return_token_ids, or ids mode)
    int64_t prompt_tokens = 0;
    int n = 1;  // choices per prompt
    bool include_usage = false, started = false, chat = false, finished = false, disconnected = false;
    int sock = -1;
  };

  Impl(ServerOptions o, GenerationBackend& b, std::shared_ptr<const tokenizer::Tokenizer> t)
      : opts(std::move(o)), backend(b), tok(std::move(t)) {
    ids_mode = !opts.engine_text || !tok;
    if (!tok) {
      chat_template_error = "this server has no tokenizer";
    } else if (!tok->chat_template().empty()) {
      try {
        chat_template = std::make_unique<tokenizer::ChatTemplate>(tok->chat_template());
      } catch (const std::exception& e) {
        chat_template_error = e.what();
      }
    } else {
      chat_template_error = "this model has no chat template";
    }
    setup_routes();
  }

  void count_disconnect() {
    std::lock_guard<std::mutex> lk(mu);
    ++counters.client_disconnects;
  }

  // ------------------------------------------------------------------ routing
  void send_error(httplib::Response& res, const ApiError& e) {
    res.status = e.status();
    if (e.status() == 429 || e.status() == 503) res.set_header("Retry-After", std::to_string(opts.retry_after_seconds));
    res.set_content(e.body(), "application/json");
  }

  bool authorized(const httplib::Request& req) const {
    if (opts.api_key.empty()) return true;
    const std::string h = req.get_header_value("Authorization");
    if (h.size() < 7 || lower(h.substr(0, 7)) != "bearer ") return false;
    std::string token = h.substr(7);
    while (!token.empty() && token.front() == ' ') token.erase(token.begin());
    return constant_time_equal(opts.api_key, token);
  }

  void dispatch(const httplib::Request& req, httplib::Response& res) {
    try {
      const std::string& p = req.path;
      const std::string method = req.method == "HEAD" ? "GET" : req.method;
      std::string allowed;
      std::function<void()> handler;
      if (p == "/health") {
        allowed = "GET";
        handler = [&] { handle_health(res); };
      } else if (p == "/metrics") {
        allowed = "GET";
        handler = [&] { handle_metrics(res); };
      } else if (p == "/v1/models") {
        allowed = "GET";
        handler = [&] { handle_models(res, ""); };
      } else if (p.rfind("/v1/models/", 0) == 0 && p.size() > 11) {
        allowed = "GET";
        handler = [&] { handle_models(res, p.substr(11)); };
      } else if (p == "/v1/completions") {
        allowed = "POST";
        handler = [&] { handle_generation(req, res, Endpoint::kCompletions); };
      } else if (p == "/v1/chat/completions") {
        allowed = "POST";
        handler = [&] { handle_generation(req, res, Endpoint::kChat); };
      } else {
        throw ApiError(404, "unknown route: " + req.method + " " + p, "invalid_request_error", "", "not_found");
      }
      if (method != allowed) {
        res.set_header("Allow", allowed);
        throw ApiError(405, "method " + req.method + " is not allowed on " + p + " (allowed: " + allowed + ")",
                       "invalid_request_error", "", "method_not_allowed");
      }
      if (p.rfind("/v1/", 0) == 0 && !authorized(req))
        throw ApiError(401, "missing or invalid API key: send 'Authorization: Bearer <key>'", "authentication_error",
                       "", "invalid_api_key");
      if (method == "POST") {
        std::string ct = lower(req.get_header_value("Content-Type"));
        ct = ct.substr(0, ct.find(';'));
        while (!ct.empty() && ct.back() == ' ') ct.pop_back();
        if (ct != "application/json")
          throw ApiError(415, "Content-Type must be application/json, got '" + req.get_header_value("Content-Type") + "'",
                         "invalid_request_error", "", "unsupported_media_type");
      }
      handler();
    } catch (const ApiError& e) {
      send_error(res, e);
    } catch (const std::exception& e) {
      send_error(res, ApiError(500, std::string("internal error: ") + e.what(), "server_error"));
    }
  }

  void setup_routes() {
    auto h = [this](const httplib::Request& req, httplib::Response& res) { dispatch(req, res); };
    http.Get(".*", h);
    http.Post(".*", h);
    http.Put(".*", h);
    http.Patch(".*", h);
    http.Delete(".*", h);
    http.Options(".*", h);
    // Statuses httplib produces itself (413 body too large, 400 unparsable request line, ...): same JSON shape.
    http.set_error_handler(httplib::Server::HandlerWithResponse(
        [](const httplib::Request&, httplib::Response& res) {
          if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
          res.set_content(error_body(res.status, default_message(res.status)), "application/json");
          return httplib::Server::HandlerResponse::Handled;
        }));
    http.set_exception_handler([this](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
      std::string what = "unknown exception";
      try {
        if (ep) std::rethrow_exception(ep);
      } catch (const std::exception& e) {
        what = e.what();
      } catch (...) {
      }
      send_error(res, ApiError(500, "internal error: " + what, "server_error"));
    });
    http.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
      {
        std::lock_guard<std::mutex> lk(mu);
        ++counters.responses_by_status[res.status];
      }
      if (opts.log_requests)
        std::fprintf(stderr, "[qserve] %s %s %s -> %d\n", req.remote_addr.c_str(), req.method.c_str(),
                     req.path.c_str(), res.status);
    });
    http.set_payload_max_length(opts.max_body_bytes);
    http.set_write_timeout(opts.write_timeout_seconds, 0);
    const int threads = std::max(4, opts.http_threads);
    http.new_task_queue = [threads] { return new httplib::ThreadPool(size_t(threads)); };
  }

  // ------------------------------------------------------------------ simple routes
  void handle_health(httplib::Response& res) {
    if (draining) throw ApiError(503, "the server is shutting down", "service_unavailable_error");
    res.set_content("{\"status\":\"ok\"}", "application/json");
  }

  void handle_metrics(httplib::Response& res) {
    res.set_content(prometheus_text(backend.metrics(), snapshot()), "text/plain; version=0.0.4; charset=utf-8");
  }

  ojson model_card() const {
    return ojson{{"id", opts.served_model_name}, {"object", "model"},   {"created", started_at},
                 {"owned_by", "qserve"},         {"root", opts.served_model_name}, {"max_model_len", backend.max_context()}};
  }

  void handle_models(httplib::Response& res, const std::string& id) {
    if (id.empty()) {
      res.set_content(dump(ojson{{"object", "list"}, {"data", ojson::array({model_card()})}}), "application/json");
      return;
    }
    if (id != opts.served_model_name)
      throw ApiError(404, "The model '" + id + "' does not exist", "invalid_request_error", "model", "model_not_found");
    res.set_content(dump(model_card()), "application/json");
  }

  HttpCounters snapshot() const {
    std::lock_guard<std::mutex> lk(mu);
    return counters;
  }

  // ------------------------------------------------------------------ generation
  // Ids mode: the text of `ids` from the tokenizer, skipping ids it does not have ("" without a tokenizer).
  std::string decode_known(const std::vector<int32_t>& ids) const {
    if (!tok) return "";
    std::vector<int> known;
    for (int32_t id : ids)
      if (id >= 0 && id < tok->vocab_size()) known.push_back(id);
    return tok->decode(known);
  }

  // Ids mode: replaces the (empty) text of an engine event with the server's own decode of its tokens.
  void fill_text(StreamState& st, ChoiceEvent& e) const {
    if (!ids_mode) return;
    e.out.text.clear();
    tokenizer::IncrementalDecoder* dec = st.decoders[size_t(e.choice)].get();
    if (!dec) return;
    for (int32_t id : e.out.tokens) {
      if (id < 0 || id >= tok->vocab_size()) continue;  // the model's vocabulary is larger than the tokenizer's
      e.out.text += dec->push(id);
    }
    if (e.out.finish != runtime::FinishReason::kNone) e.out.text += dec->flush();
  }

  std::vector<int32_t> chat_prompt(const OpenAiRequest& r) {
    if (!chat_template) throw ApiError(400, "chat completions are unavailable: " + chat_template_error);
    ojson ctx = ojson::object();
    ctx["messages"] = r.messages;
    ctx["bos_token"] = tok->bos_token();
    ctx["eos_token"] = tok->eos_token();
    ctx["add_generation_prompt"] = r.add_generation_prompt;
    std::string text;
    try {
      text = chat_template->render(ctx);
    } catch (const std::exception& e) {
      throw ApiError(400, std::string("the chat template rejected the messages: ") + e.what(), "invalid_request_error",
                     "messages");
    }
    const std::vector<int> ids = tok->encode(text, /*add_special_tokens=*/false);
    return std::vector<int32_t>(ids.begin(), ids.end());
  }

  void handle_generation(const httplib::Request& req, httplib::Response& res, Endpoint ep) {
    if (draining) throw ApiError(503, "the server is shutting down", "service_unavailable_error");
    ojson body;
    try {
      body = ojson::parse(req.body);
    } catch (const ojson::parse_error& e) {
      throw ApiError(400, std::string("malformed JSON body: ") + e.what(), "invalid_request_error", "", "invalid_json");
    }
    const OpenAiRequest r = ep == Endpoint::kChat ? parse_chat_request(body) : parse_completion_request(body);
    if (r.model != opts.served_model_name)
      throw ApiError(404, "The model '" + r.model + "' does not exist (this server serves '" + opts.served_model_name + "')",
                     "invalid_request_error", "model", "model_not_found");
    if (ids_mode && !r.stop.empty())
      throw ApiError(400, "'stop' strings are not supported by this server: it streams token ids without "
                          "detokenizing in the engine (random weights or no tokenizer); use stop_token_ids",
                     "invalid_request_error", "stop");

    // Prompts -> token ids.
    std::vector<std::vector<int32_t>> prompts;
    std::vector<std::string> prompt_texts;
    const int32_t vocab = backend.vocab_size();
    if (ep == Endpoint::kChat) {
      prompts.push_back(chat_prompt(r));
      prompt_texts.emplace_back();
    } else {
      for (const PromptInput& p : r.prompts) {
        if (p.is_ids) {
          for (int32_t id : p.ids)
            if (id < 0 || (vocab > 0 && id >= vocab))
              throw ApiError(400, "token id " + std::to_string(id) + " in 'prompt' is outside the vocabulary [0, " +
                                      std::to_string(vocab) + ")", "invalid_request_error", "prompt");
          prompts.push_back(p.ids);
          prompt_texts.push_back(!r.echo ? "" : ids_mode ? decode_known(p.ids)
                                                           : tok->decode(std::vector<int>(p.ids.begin(), p.ids.end())));
        } else {
          if (!tok)
            throw ApiError(400, "this server has no tokenizer for the model's vocabulary (" + std::to_string(vocab) +
                                    " ids): send 'prompt' as an array of token ids", "invalid_request_error", "prompt");
          const std::vector<int> ids = tok->encode(p.text, /*add_special_tokens=*/true);
          prompts.emplace_back(ids.begin(), ids.end());
          prompt_texts.push_back(p.text);
        }
        if (prompts.back().empty()) throw ApiError(400, "the prompt encodes to no tokens", "invalid_request_error", "prompt");
      }
    }
    const int64_t ctx = backend.max_context();
    const char* prompt_param = ep == Endpoint::kChat ? "messages" : "prompt";
    std::vector<int32_t> max_tokens;
    for (const auto& p : prompts) {
      const int64_t n = int64_t(p.size());
      if (n + 1 > ctx)
        throw ApiError(400, "This model's maximum context length is " + std::to_string(ctx) + " tokens, but the " +
                                (ep == Endpoint::kChat ? "messages have " : "prompt has ") + std::to_string(n) +
                                " tokens (at least one more is needed to generate)",
                       "invalid_request_error", prompt_param, "context_length_exceeded");
      int64_t m;
      if (r.max_tokens) {
        m = *r.max_tokens;
        if (n + m > ctx)
          throw ApiError(400, "This model's maximum context length is " + std::to_string(ctx) + " tokens; the prompt has " +
                                  std::to_string(n) + " tokens and max_tokens asks for " + std::to_string(m) +
                                  " more (" + std::to_string(n + m) + " > " + std::to_string(ctx) + ")",
                         "invalid_request_error", ep == Endpoint::kChat ? "max_completion_tokens" : "max_tokens",
                         "context_length_exceeded");
      } else {
        m = ep == Endpoint::kChat ? ctx - n : std::min<int64_t>(16, ctx - n);
      }
      max_tokens.push_back(int32_t(std::min<int64_t>(m, std::numeric_limits<int32_t>::max())));
    }

    std::vector<int32_t> stop_ids = r.stop_token_ids;
    if (!r.ignore_eos)
      for (int32_t id : backend.eos_token_ids())
        if (std::find(stop_ids.begin(), stop_ids.end(), id) == stop_ids.end()) stop_ids.push_back(id);

    const std::string id = make_request_id(ep);
    ResponseBuilder builder(ep, id, int64_t(std::time(nullptr)), opts.served_model_name, tok.get(), r.logprobs);
    auto st = std::make_shared<StreamState>(this, backend, builder);
    st->chat = ep == Endpoint::kChat;
    st->token_ids = r.return_token_ids || ids_mode;
    st->include_usage = r.include_usage;
    st->n = r.n;
    st->sock = HttpTransport::current_socket();
    for (size_t pi = 0; pi < prompts.size(); ++pi) {
      st->prompt_tokens += int64_t(prompts[pi].size());
      for (int i = 0; i < r.n; ++i) {
        runtime::RequestParams p;
        p.prompt = prompts[pi];
        p.sampling = r.sampling;
        p.sampling.seed = r.seed_given ? r.sampling.seed + uint64_t(i) : random_seed();
        p.max_tokens = max_tokens[pi];
        p.stop = r.stop;
        p.stop_token_ids = stop_ids;
        p.ignore_eos = r.ignore_eos;
        p.logprobs = r.logprobs;
        p.detokenize = !ids_mode;
        try {
          st->session.add(std::move(p));
        } catch (const runtime::QueueFull& e) {
          const bool shutting = draining || std::string(e.what()).find("shutting down") != std::string::npos;
          if (shutting) throw ApiError(503, "the server is shutting down", "service_unavailable_error");
          throw ApiError(429, std::string("the engine's queue is full, retry later: ") + e.what(), "rate_limit_error",
                         "", "queue_full");
        } catch (const runtime::InvalidRequest& e) {
          throw ApiError(400, e.what(), "invalid_request_error");
        }
        st->echo.push_back(r.echo ? prompt_texts[pi] : "");
        if (ids_mode)  // decoded as the engine would (RequestParams::continues_text), so both modes agree
          st->decoders.push_back(tok ? std::make_unique<tokenizer::IncrementalDecoder>(
                                           *tok, /*skip_special_tokens=*/true, runtime::RequestParams().continues_text)
                                     : nullptr);
        st->results.emplace_back();
        st->text_offsets.push_back(int64_t(st->echo.back().size()));
      }
    }

    if (r.stream) {
      res.set_header("Cache-Control", "no-cache");
      res.set_header("X-Accel-Buffering", "no");
      res.set_chunked_content_provider(
          "text/event-stream",
          [this, st](size_t, httplib::DataSink& sink) { return stream_step(*st, sink); },
          [this, st](bool success) {
            if (!success && !st->session.all_finished()) {
              st->session.abort_all();
              if (!st->disconnected) count_disconnect();
            }
          });
      return;
    }
    collect(*st, res);
  }

  // Each prompt's cached tokens once (from its first choice).
  static int64_t cached_tokens(const StreamState& st) {
    int64_t cached = 0;
    for (size_t i = 0; i < st.results.size(); i += size_t(st.n)) cached += st.results[i].cached_prompt_tokens;
    return cached;
  }

  // Non-streaming: wait for every choice, watching the client.
  void collect(StreamState& st, httplib::Response& res) {
    std::vector<ChoiceEvent> evs;
    while (!st.session.all_finished()) {
      st.session.wait(evs, std::chrono::milliseconds(opts.poll_ms));
      for (ChoiceEvent& e : evs) {
        fill_text(st, e);
        st.results[e.choice].add(e.out);
      }
      if (!st.session.all_finished() && !HttpTransport::peer_connected(st.sock)) {
        st.session.abort_all();
        count_disconnect();
        res.status = 499;  // client closed the request (nothing is delivered)
        return;
      }
    }
    int64_t completion = 0, cached = 0;
    for (size_t i = 0; i < st.results.size(); ++i) {
      const ChoiceResult& c = st.results[i];
      if (c.finish == runtime::FinishReason::kError)
        throw ApiError(500, "generation failed: " + c.error, "server_error");
      if (c.finish == runtime::FinishReason::kAbort)
        throw ApiError(503, "the request was aborted: the server is shutting down", "service_unavailable_error");
      completion += c.completion_tokens;
    }
    cached = cached_tokens(st);
    ojson full = st.builder.full_response(st.results, st.echo, usage_json(st.prompt_tokens, completion, cached));
    if (st.token_ids)
      for (size_t i = 0; i < st.results.size(); ++i) full["choices"][i]["token_ids"] = st.results[i].tokens;
    res.set_content(dump(full), "application/json");
  }

  // Streaming: one call writes what arrived since the previous call; false ends the response (client gone).
  bool stream_step(StreamState& st, httplib::DataSink& sink) {
    std::string out;
    if (!st.started) {
      st.started = true;
      for (size_t i = 0; i < st.results.size(); ++i) {
        if (st.chat)
          out += sse_event(st.builder.chunk(int(i), "", nullptr, runtime::FinishReason::kNone, /*role_only=*/true));
        else if (!st.echo[i].empty())
          out += sse_event(st.builder.chunk(int(i), st.echo[i], nullptr, runtime::FinishReason::kNone));
      }
    }
    std::vector<ChoiceEvent> evs;
    if (!st.session.all_finished()) st.session.wait(evs, std::chrono::milliseconds(opts.poll_ms));
    for (ChoiceEvent& e : evs) {
      fill_text(st, e);
      ChoiceResult& c = st.results[e.choice];
      const size_t first = c.tokens.size();
      c.add(e.out);
      const bool has_lp = !e.out.tokens.empty() && e.out.token_logprobs.size() == e.out.tokens.size();
      const bool has_ids = st.token_ids && !e.out.tokens.empty();
      if (!e.out.text.empty() || has_lp || has_ids) {
        ojson lp = has_lp ? st.builder.logprobs_json(c.tokens, c.token_logprobs, c.top_logprobs, first,
                                                     e.out.tokens.size(), &st.text_offsets[e.choice])
                          : ojson(nullptr);
        ojson ch = st.builder.chunk(e.choice, e.out.text, lp, runtime::FinishReason::kNone);
        if (st.token_ids) ch["choices"][0]["token_ids"] = e.out.tokens;
        out += sse_event(ch);
      }
      if (e.out.finish == runtime::FinishReason::kError) {
        out += "data: " + error_body(500, "generation failed: " + e.out.error, "server_error") + "\n\n";
      } else if (e.out.finish != runtime::FinishReason::kNone) {
        out += sse_event(st.builder.chunk(e.choice, "", nullptr, e.out.finish));
      }
    }
    if (st.session.all_finished() && !st.finished) {
      st.finished = true;
      if (st.include_usage) {
        int64_t completion = 0;
        for (const ChoiceResult& c : st.results) completion += c.completion_tokens;
        const int64_t cached = cached_tokens(st);
        out += sse_event(st.builder.usage_chunk(usage_json(st.prompt_tokens, completion, cached)));
      }
      out += kSseDone;
    }
    if (!out.empty() && !sink.write(out.data(), out.size())) {
      disconnected(st);
      return false;
    }
    if (st.finished) {
      sink.done();
      return true;
    }
    // httplib checks the stream (HttpTransport: peer still there) before every call; this covers idle waits too.
    if (out.empty() && !HttpTransport::peer_connected(st.sock)) {
      disconnected(st);
      return false;
    }
    return true;
  }

  void disconnected(StreamState& st) {
    if (st.disconnected) return;
    st.disconnected = true;
    if (!st.session.all_finished()) {
      st.session.abort_all();
      count_disconnect();
    }
  }
};

Server::Server(ServerOptions opts, GenerationBackend& backend, std::shared_ptr<const tokenizer::Tokenizer> tok)
    : impl_(std::make_unique<Impl>(std::move(opts), backend, std::move(tok))) {}

Server::~Server() {
  if (impl_->thread.joinable()) {
    stop();
    impl_->thread.join();
  }
}

int Server::bind() {
  const ServerOptions& o = impl_->opts;
  int port = o.port;
  if (port == 0) {
    port = impl_->http.bind_to_any_port(o.host);
  } else if (!impl_->http.bind_to_port(o.host, port)) {
    port = -1;
  }
  QS_CHECK(port > 0) << "cannot listen on " << o.host << ":" << o.port << " (address in use or not available)";
  impl_->http.widen_backlog(4096);  // capped by net.core.somaxconn
  impl_->bound_port = port;
  return port;
}

void Server::run() {
  QS_CHECK(impl_->bound_port > 0) << "Server::run() before bind()";
  impl_->http.listen_after_bind();
}

void Server::start() {
  bind();
  impl_->thread = std::thread([this] { run(); });
  // listen_after_bind() sets is_running right away; wait for it so stop() is never lost.
  while (!impl_->http.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
}

int Server::port() const { return impl_->bound_port; }

void Server::begin_drain() { impl_->draining = true; }
bool Server::draining() const { return impl_->draining; }

bool Server::wait_idle(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lk(impl_->mu);
  return impl_->idle_cv.wait_for(lk, timeout, [&] { return impl_->counters.in_flight == 0; });
}

void Server::stop() { impl_->http.stop(); }

HttpCounters Server::counters() const { return impl_->snapshot(); }

}  // namespace qs::server
