// How much generation throughput the HTTP layer can carry: an "instant" engine (a GenerationBackend that emits
// one token per running request per step, with no model) is drained (a) in process, by callbacks, and
// (b) through `qserve serve`'s HTTP server by C concurrent streaming clients on loopback (SSE, one event per
// token). The ratio HTTP / in-process at a step time of 0 is the server's ceiling on this machine; with a step
// time like a real engine's (e.g. 20 ms per decode step), the ratio shows whether the server keeps up.
// Usage: bench_server_http [concurrency=64] [tokens=64] [step_ms list=0,20]
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <sstream>
#include <thread>
#include <vector>

#include "core/paths.h"
#include "server/server.h"

namespace {

using namespace qs;
using Clock = std::chrono::steady_clock;

class InstantBackend final : public server::GenerationBackend {
 public:
  explicit InstantBackend(int step_ms) : step_ms_(step_ms), thread_([this] { loop(); }) {}
  ~InstantBackend() override {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  uint64_t submit(runtime::RequestParams p, runtime::OutputCallback cb) override {
    std::lock_guard<std::mutex> lk(mu_);
    reqs_.push_back({++next_, p.max_tokens, 0, std::move(cb)});
    cv_.notify_all();
    return next_;
  }
  void abort(uint64_t id) override {
    std::lock_guard<std::mutex> lk(mu_);
    for (auto& r : reqs_)
      if (r.id == id) r.aborted = true;
  }
  runtime::EngineMetrics metrics() const override { return {}; }
  int64_t max_context() const override { return 1 << 20; }
  int32_t vocab_size() const override { return 8192; }
  std::vector<int32_t> eos_token_ids() const override { return {}; }

 private:
  struct Req {
    uint64_t id;
    int max_tokens, done;
    runtime::OutputCallback cb;
    bool aborted = false;
  };
  void loop() {
    std::unique_lock<std::mutex> lk(mu_);
    while (!stop_) {
      if (reqs_.empty()) {
        cv_.wait(lk);
        continue;
      }
      if (step_ms_ > 0) cv_.wait_for(lk, std::chrono::milliseconds(step_ms_));
      std::vector<std::pair<runtime::OutputCallback, runtime::RequestOutput>> evs;
      for (auto it = reqs_.begin(); it != reqs_.end();) {
        runtime::RequestOutput o;
        o.id = it->id;
        o.tokens = {42};
        o.text = " token";
        o.completion_tokens = ++it->done;
        o.prompt_tokens = 4;
        if (it->aborted) o.finish = runtime::FinishReason::kAbort;
        else if (it->done >= it->max_tokens) o.finish = runtime::FinishReason::kLength;
        evs.push_back({it->cb, o});
        it = o.finish != runtime::FinishReason::kNone ? reqs_.erase(it) : it + 1;
      }
      lk.unlock();
      for (auto& [cb, o] : evs) cb(o);
      lk.lock();
    }
  }
  int step_ms_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Req> reqs_;
  uint64_t next_ = 0;
  bool stop_ = false;
  std::thread thread_;
};

double in_process(int step_ms, int conc, int tokens) {
  InstantBackend b(step_ms);
  std::atomic<int> left{conc};
  std::atomic<int64_t> got{0};
  const auto t0 = Clock::now();
  for (int i = 0; i < conc; ++i) {
    runtime::RequestParams p;
    p.prompt = {1, 2, 3, 4};
    p.max_tokens = tokens;
    b.submit(p, [&](const runtime::RequestOutput& o) {
      got += int64_t(o.tokens.size());
      if (o.finish != runtime::FinishReason::kNone) --left;
    });
  }
  while (left > 0) std::this_thread::sleep_for(std::chrono::microseconds(200));
  return double(got) / std::chrono::duration<double>(Clock::now() - t0).count();
}

// One streaming client; returns the number of SSE token events received.
int64_t client(int port, int tokens) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(uint16_t(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return 0;
  const std::string body = "{\"model\":\"bench\",\"prompt\":\"a b c\",\"stream\":true,\"max_tokens\":" + std::to_string(tokens) + "}";
  const std::string req = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: "
                          "application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
  ::send(fd, req.data(), req.size(), MSG_NOSIGNAL);
  std::string all;
  char buf[65536];
  ssize_t n;
  while ((n = ::recv(fd, buf, sizeof buf, 0)) > 0) all.append(buf, size_t(n));
  ::close(fd);
  int64_t events = 0;
  for (size_t pos = all.find("\"text\":\" token\""); pos != std::string::npos; pos = all.find("\"text\":\" token\"", pos + 1))
    ++events;
  return events;
}

double over_http(int step_ms, int conc, int tokens, int64_t* received) {
  InstantBackend b(step_ms);
  auto tok = std::make_shared<const tokenizer::Tokenizer>(
      tokenizer::Tokenizer::from_dir(data_dir() + "/models/qs-llama-tiny"));
  server::ServerOptions o;
  o.port = 0;
  o.served_model_name = "bench";
  o.http_threads = conc + 16;
  server::Server s(o, b, tok);
  s.start();
  std::vector<std::thread> ts;
  std::atomic<int64_t> got{0};
  const auto t0 = Clock::now();
  for (int i = 0; i < conc; ++i) ts.emplace_back([&] { got += client(s.port(), tokens); });
  for (auto& t : ts) t.join();
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  *received = got;
  return double(got) / secs;
}

}  // namespace

int main(int argc, char** argv) {
  const int conc = argc > 1 ? std::atoi(argv[1]) : 64;
  const int tokens = argc > 2 ? std::atoi(argv[2]) : 64;
  std::vector<int> steps = {0, 20};
  if (argc > 3) {
    steps.clear();
    std::stringstream ss(argv[3]);
    std::string x;
    while (std::getline(ss, x, ',')) steps.push_back(std::atoi(x.c_str()));
  }
  std::printf("server HTTP ceiling: %d concurrent streams x %d tokens, %u hardware threads\n", conc, tokens,
              std::thread::hardware_concurrency());
  std::printf("%8s | %16s | %16s | %7s | %s\n", "step ms", "in-process tok/s", "HTTP SSE tok/s", "ratio", "events");
  for (int step : steps) {
    const double a = in_process(step, conc, tokens);
    int64_t received = 0;
    const double h = over_http(step, conc, tokens, &received);
    std::printf("%8d | %16.0f | %16.0f | %6.1f%% | %lld/%lld\n", step, a, h, 100.0 * h / a, (long long)received,
                (long long)conc * tokens);
  }
  return 0;
}
