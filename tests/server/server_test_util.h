// Helpers for the server tests: a raw loopback HTTP/1.1 client (so a test controls exactly when a connection is
// closed, and sees status, headers and the de-chunked body), SSE parsing, and FakeBackend: a scripted
// GenerationBackend with its own "engine thread" that emits one token per step (the prompt's tokens, cycled), so
// every HTTP behaviour (validation, streaming, disconnects, queue full, shutdown) is testable without a model.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "server/generation_backend.h"
#include "tokenizer/tokenizer.h"

namespace qs::server::test {

struct HttpReply {
  int status = 0;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;                            // de-chunked
  nlohmann::json json() const { return nlohmann::json::parse(body); }
};

class RawConn {
 public:
  explicit RawConn(int port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(uint16_t(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) close();
  }
  ~RawConn() { close(); }
  bool ok() const { return fd_ >= 0; }
  void send_all(const std::string& s) {
    size_t off = 0;
    while (fd_ >= 0 && off < s.size()) {
      const ssize_t n = ::send(fd_, s.data() + off, s.size() - off, MSG_NOSIGNAL);
      if (n <= 0) return;
      off += size_t(n);
    }
  }
  // Appends what arrives within `timeout_ms` (until the peer closes when `until_close`). Returns false on EOF.
  bool read_some(std::string& out, int timeout_ms) {
    if (fd_ < 0) return false;
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, timeout_ms) <= 0) return true;
    char buf[8192];
    const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
    if (n <= 0) return false;
    out.append(buf, size_t(n));
    return true;
  }
  std::string read_to_close(int timeout_ms = 30000) {
    std::string out;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    while (std::chrono::steady_clock::now() < deadline && read_some(out, 100)) {
    }
    return out;
  }
  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

inline std::string request_text(const std::string& method, const std::string& path, const std::string& body,
                                const std::string& content_type = "application/json",
                                const std::vector<std::string>& extra_headers = {}) {
  std::string r = method + " " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n";
  if (!content_type.empty()) r += "Content-Type: " + content_type + "\r\n";
  for (const auto& h : extra_headers) r += h + "\r\n";
  if (!body.empty() || method == "POST") r += "Content-Length: " + std::to_string(body.size()) + "\r\n";
  return r + "\r\n" + body;
}

inline std::string dechunk(const std::string& s) {
  std::string out;
  size_t pos = 0;
  while (pos < s.size()) {
    const size_t eol = s.find("\r\n", pos);
    if (eol == std::string::npos) break;
    const size_t n = std::stoul(s.substr(pos, eol - pos), nullptr, 16);
    if (n == 0) break;
    out += s.substr(eol + 2, n);
    pos = eol + 2 + n + 2;
  }
  return out;
}

inline HttpReply parse_reply(const std::string& raw) {
  HttpReply r;
  const size_t head_end = raw.find("\r\n\r\n");
  if (raw.size() < 12 || head_end == std::string::npos) return r;
  r.status = std::stoi(raw.substr(9, 3));
  size_t pos = raw.find("\r\n") + 2;
  while (pos < head_end) {
    const size_t eol = raw.find("\r\n", pos);
    const std::string line = raw.substr(pos, eol - pos);
    const size_t colon = line.find(':');
    std::string name = line.substr(0, colon);
    std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return char(std::tolower(c)); });
    std::string value = colon == std::string::npos ? "" : line.substr(colon + 1);
    while (!value.empty() && value.front() == ' ') value.erase(value.begin());
    r.headers[name] = value;
    pos = eol + 2;
  }
  const std::string body = raw.substr(head_end + 4);
  r.body = r.headers["transfer-encoding"] == "chunked" ? dechunk(body) : body;
  return r;
}

inline HttpReply http(int port, const std::string& method, const std::string& path, const std::string& body = "",
                      const std::string& content_type = "application/json",
                      const std::vector<std::string>& extra_headers = {}) {
  RawConn c(port);
  if (!c.ok()) return {};
  c.send_all(request_text(method, path, body, content_type, extra_headers));
  return parse_reply(c.read_to_close());
}

inline HttpReply post_json(int port, const std::string& path, const nlohmann::json& body,
                           const std::vector<std::string>& extra_headers = {}) {
  return http(port, "POST", path, body.dump(), "application/json", extra_headers);
}

// The "data: " payloads of an SSE body, in order ("[DONE]" included).
inline std::vector<std::string> sse_data(const std::string& body) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos < body.size()) {
    size_t end = body.find("\n\n", pos);
    if (end == std::string::npos) end = body.size();
    const std::string ev = body.substr(pos, end - pos);
    if (ev.rfind("data: ", 0) == 0) out.push_back(ev.substr(6));
    pos = end + 2;
  }
  return out;
}

// A scripted engine: one token per step for every running request.
class FakeBackend final : public GenerationBackend {
 public:
  struct Options {
    int64_t max_context = 256;
    int max_queue = 1000;
    int step_ms = 5;
  };

  FakeBackend(std::shared_ptr<const tokenizer::Tokenizer> tok, Options o) : tok_(std::move(tok)), o_(o) {
    thread_ = std::thread([this] { loop(); });
  }
  ~FakeBackend() override {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

  uint64_t submit(runtime::RequestParams p, runtime::OutputCallback cb) override {
    std::lock_guard<std::mutex> lk(mu_);
    if (shutting_down_) throw runtime::QueueFull("the engine is shutting down");
    if (int(reqs_.size()) >= o_.max_queue) throw runtime::QueueFull("queue full (" + std::to_string(o_.max_queue) + ")");
    if (p.prompt.empty()) throw runtime::InvalidRequest("empty prompt");
    const uint64_t id = ++next_id_;
    last_params_ = p;
    ++submitted_;
    reqs_.push_back({id, std::move(p), std::move(cb)});
    cv_.notify_all();
    return id;
  }
  void abort(uint64_t id) override {
    std::lock_guard<std::mutex> lk(mu_);
    aborts_.insert(id);
    cv_.notify_all();
  }
  runtime::EngineMetrics metrics() const override {
    std::lock_guard<std::mutex> lk(mu_);
    runtime::EngineMetrics m;
    m.running = paused_ ? 0 : int64_t(reqs_.size());
    m.waiting = paused_ ? int64_t(reqs_.size()) : 0;
    m.pages_total = 100;
    m.pages_used = int64_t(reqs_.size());
    m.pages_free = m.pages_total - m.pages_used;
    for (int i = 0; i < 5; ++i) m.requests_finished[i] = finished_[i];
    m.generated_tokens = generated_;
    m.ttft.bounds = {0.01, 0.1, 1.0};
    m.ttft.counts = {1, 2, 3, 3};
    m.ttft.sum = 0.5;
    m.ttft.count = 3;
    return m;
  }
  int64_t max_context() const override { return o_.max_context; }
  int32_t vocab_size() const override { return tok_->vocab_size(); }
  std::vector<int32_t> eos_token_ids() const override { return {}; }

  void pause(bool p) {
    std::lock_guard<std::mutex> lk(mu_);
    paused_ = p;
    cv_.notify_all();
  }
  void shutdown() {
    std::lock_guard<std::mutex> lk(mu_);
    shutting_down_ = true;
    for (auto& r : reqs_) aborts_.insert(r.id);
    cv_.notify_all();
  }
  int64_t live() const {
    std::lock_guard<std::mutex> lk(mu_);
    return int64_t(reqs_.size());
  }
  int64_t aborted() const {
    std::lock_guard<std::mutex> lk(mu_);
    return finished_[int(runtime::FinishReason::kAbort)];
  }
  int64_t submitted() const {
    std::lock_guard<std::mutex> lk(mu_);
    return submitted_;
  }
  runtime::RequestParams last_params() const {
    std::lock_guard<std::mutex> lk(mu_);
    return last_params_;
  }
  // The text the fake generates for `prompt` with `max_tokens` and no stop string.
  std::string expected_text(const std::vector<int32_t>& prompt, int max_tokens) const {
    std::string s;
    for (int i = 0; i < max_tokens; ++i) s += tok_->decode({token_at(prompt, i)}, true);
    return s;
  }
  static int32_t token_at(const std::vector<int32_t>& prompt, int i) {
    return prompt.size() > 1 ? prompt[1 + size_t(i) % (prompt.size() - 1)] : prompt[0];
  }

 private:
  struct Req {
    uint64_t id;
    runtime::RequestParams p;
    runtime::OutputCallback cb;
    std::string all;
    size_t sent = 0;
    int generated = 0;
  };

  void loop() {
    std::unique_lock<std::mutex> lk(mu_);
    while (!stop_) {
      cv_.wait_for(lk, std::chrono::milliseconds(o_.step_ms));
      std::vector<std::pair<runtime::OutputCallback, runtime::RequestOutput>> events;
      for (auto it = reqs_.begin(); it != reqs_.end();) {
        Req& r = *it;
        runtime::RequestOutput o;
        o.id = r.id;
        o.prompt_tokens = int32_t(r.p.prompt.size());
        if (aborts_.count(r.id)) {
          o.finish = runtime::FinishReason::kAbort;
        } else if (!paused_) {
          const int32_t t = token_at(r.p.prompt, r.generated++);
          ++generated_;
          o.tokens = {t};
          if (r.p.logprobs >= 0) {
            o.token_logprobs = {{t, -0.5f}};
            std::vector<runtime::TokenLogprob> top;
            for (int k = 0; k < r.p.logprobs; ++k) top.push_back({k, -1.0f - float(k)});
            o.top_logprobs = {top};
          }
          r.all += tok_->decode({t}, true);
          size_t hold = 0;
          for (const auto& s : r.p.stop) hold = std::max(hold, s.size() - 1);
          size_t cut = std::string::npos;
          for (const auto& s : r.p.stop) cut = std::min(cut, r.all.find(s));
          if (std::find(r.p.stop_token_ids.begin(), r.p.stop_token_ids.end(), t) != r.p.stop_token_ids.end()) {
            o.finish = runtime::FinishReason::kStop;
          } else if (cut != std::string::npos) {
            o.text = r.all.substr(r.sent, cut > r.sent ? cut - r.sent : 0);
            o.finish = runtime::FinishReason::kStop;
          } else if (r.generated >= r.p.max_tokens) {
            o.text = r.all.substr(r.sent);
            o.finish = runtime::FinishReason::kLength;
          } else {
            const size_t safe = r.all.size() > hold ? r.all.size() - hold : 0;
            if (safe > r.sent) o.text = r.all.substr(r.sent, safe - r.sent);
            r.sent = std::max(r.sent, safe);
          }
        } else {
          ++it;
          continue;
        }
        o.completion_tokens = r.generated;
        events.push_back({r.cb, o});
        if (o.finish != runtime::FinishReason::kNone) {
          ++finished_[int(o.finish)];
          it = reqs_.erase(it);
        } else {
          ++it;
        }
      }
      lk.unlock();
      for (auto& [cb, o] : events) cb(o);
      lk.lock();
    }
  }

  std::shared_ptr<const tokenizer::Tokenizer> tok_;
  Options o_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::thread thread_;
  std::vector<Req> reqs_;
  std::set<uint64_t> aborts_;
  uint64_t next_id_ = 0;
  int64_t submitted_ = 0, generated_ = 0;
  int64_t finished_[5] = {0, 0, 0, 0, 0};
  bool stop_ = false, paused_ = false, shutting_down_ = false;
  runtime::RequestParams last_params_;
};

}  // namespace qs::server::test
