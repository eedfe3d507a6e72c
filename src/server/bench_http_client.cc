// The benchmark's HTTP client (see bench_http_client.h).
#include "server/bench_http_client.h"

#include <httplib.h>

#include <condition_variable>
#include <deque>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>
#include <vector>

#include "core/error.h"

namespace qs::server {
namespace {

using nlohmann::json;

struct Url {
  std::string host, base;  // base: path prefix without a trailing '/'
  int port = 80;
};

Url parse_url(const std::string& url) {
  QS_CHECK(url.rfind("https://", 0) != 0) << "bench --url " << url << ": https is not supported (use http://HOST:PORT)";
  QS_CHECK(url.rfind("http://", 0) == 0) << "bench --url must look like http://HOST:PORT, got '" << url << "'";
  Url u;
  std::string rest = url.substr(7);
  const size_t slash = rest.find('/');
  if (slash != std::string::npos) {
    u.base = rest.substr(slash);
    rest = rest.substr(0, slash);
    while (!u.base.empty() && u.base.back() == '/') u.base.pop_back();
  }
  const size_t colon = rest.rfind(':');
  if (colon != std::string::npos && rest.find(']') == std::string::npos) {
    const std::string p = rest.substr(colon + 1);
    QS_CHECK(!p.empty() && p.size() <= 5 && p.find_first_not_of("0123456789") == std::string::npos)
        << "bench --url " << url << ": bad port '" << p << "'";
    u.port = std::stoi(p);
    QS_CHECK(u.port >= 1 && u.port <= 65535) << "bench --url " << url << ": port out of range";
    rest = rest.substr(0, colon);
  }
  QS_CHECK(!rest.empty()) << "bench --url " << url << ": no host";
  u.host = rest;
  return u;
}

// The path of an OpenAI route under the URL's prefix (a prefix ending in /v1 is the API root itself).
std::string route(const Url& u, const std::string& v1_path) {
  if (u.base.size() >= 3 && u.base.compare(u.base.size() - 3, 3, "/v1") == 0) return u.base + v1_path.substr(3);
  return u.base + v1_path;
}

// The server's error message in an OpenAI error body, else the body itself (cut).
std::string error_message(int status, const std::string& body) {
  std::string msg = body.substr(0, 300);
  try {
    const json j = json::parse(body);
    if (j.contains("error") && j["error"].is_object() && j["error"].contains("message") &&
        j["error"]["message"].is_string())
      msg = j["error"]["message"].get<std::string>();
  } catch (const std::exception&) {
  }
  return "HTTP " + std::to_string(status) + ": " + msg;
}

runtime::FinishReason parse_finish(const std::string& s) {
  if (s == "length") return runtime::FinishReason::kLength;
  if (s == "stop") return runtime::FinishReason::kStop;
  if (s == "abort") return runtime::FinishReason::kAbort;
  return runtime::FinishReason::kError;
}

// Incremental Server-Sent Events parsing of one streamed completion; emits token events as chunks arrive.
class StreamParser {
 public:
  explicit StreamParser(const runtime::OutputCallback& cb) : cb_(cb) {}

  void feed(const char* data, size_t n) {
    buf_.append(data, n);
    size_t start = 0;
    for (;;) {
      size_t end = buf_.find("\n\n", start);
      const size_t crlf = buf_.find("\r\n\r\n", start);
      size_t sep = 2;
      if (crlf != std::string::npos && (end == std::string::npos || crlf < end)) end = crlf, sep = 4;
      if (end == std::string::npos) break;
      event(buf_.substr(start, end - start));
      start = end + sep;
    }
    buf_.erase(0, start);
  }

  bool done = false;                 // "data: [DONE]" seen
  std::string error;                 // an error chunk, or JSON that does not parse
  runtime::FinishReason finish = runtime::FinishReason::kNone;
  int64_t usage_completion = -1;     // the usage chunk's completion_tokens
  int64_t streamed = 0;              // tokens delivered to the callback so far

 private:
  void event(const std::string& ev) {
    size_t pos = 0;
    while (pos < ev.size()) {
      size_t eol = ev.find('\n', pos);
      if (eol == std::string::npos) eol = ev.size();
      std::string line = ev.substr(pos, eol - pos);
      pos = eol + 1;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.rfind("data:", 0) != 0) continue;  // comments, event names, ids
      std::string payload = line.substr(5);
      if (!payload.empty() && payload.front() == ' ') payload.erase(0, 1);
      data(payload);
    }
  }

  void data(const std::string& payload) {
    if (payload == "[DONE]") {
      done = true;
      return;
    }
    json j;
    try {
      j = json::parse(payload);
    } catch (const std::exception& e) {
      if (error.empty()) error = std::string("unparsable SSE chunk: ") + e.what();
      return;
    }
    if (j.contains("error")) {
      const json& e = j["error"];
      if (error.empty())
        error = e.is_object() && e.contains("message") && e["message"].is_string() ? e["message"].get<std::string>()
                                                                                   : e.dump();
      return;
    }
    if (j.contains("usage") && j["usage"].is_object() && j["usage"].contains("completion_tokens") &&
        j["usage"]["completion_tokens"].is_number_integer())
      usage_completion = j["usage"]["completion_tokens"].get<int64_t>();
    if (!j.contains("choices") || !j["choices"].is_array()) return;
    for (const json& c : j["choices"]) {
      runtime::RequestOutput out;
      if (c.contains("token_ids") && c["token_ids"].is_array()) {
        for (const json& t : c["token_ids"])
          if (t.is_number_integer()) out.tokens.push_back(t.get<int32_t>());
      } else if (c.contains("text") && c["text"].is_string() && !c["text"].get<std::string>().empty()) {
        out.tokens.push_back(-1);  // a text chunk without ids: at least one token
      }
      if (!out.tokens.empty()) {
        streamed += int64_t(out.tokens.size());
        out.completion_tokens = int32_t(streamed);
        cb_(out);
      }
      if (c.contains("finish_reason") && c["finish_reason"].is_string())
        finish = parse_finish(c["finish_reason"].get<std::string>());
    }
  }

  const runtime::OutputCallback& cb_;
  std::string buf_;
};

}  // namespace

struct HttpBenchClient::Impl {
  HttpBenchClientOptions o;
  Url url;
  std::string model;
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::pair<runtime::RequestParams, runtime::OutputCallback>> queue;
  bool stopping = false;
  std::vector<std::thread> workers;

  std::unique_ptr<httplib::Client> client() const {
    auto c = std::make_unique<httplib::Client>(url.host, url.port);
    c->set_keep_alive(o.keep_alive);
    c->set_tcp_nodelay(true);
    c->set_connection_timeout(o.connect_timeout_s, 0);
    c->set_read_timeout(o.read_timeout_s, 0);
    c->set_write_timeout(60, 0);
    if (!o.api_key.empty()) c->set_bearer_token_auth(o.api_key);
    return c;
  }

  void check_server() {
    auto c = client();
    auto res = c->Get(route(url, "/v1/models").c_str());
    QS_CHECK(res) << "bench --url " << o.url << ": cannot reach the server (" << httplib::to_string(res.error())
                  << ")";
    QS_CHECK(res->status == 200) << "bench --url " << o.url << ": GET /v1/models answered "
                                 << error_message(res->status, res->body);
    std::vector<std::string> ids;
    try {
      const json list = json::parse(res->body);
      for (const json& m : list.at("data")) ids.push_back(m.at("id").get<std::string>());
    } catch (const std::exception& e) {
      QS_FAIL() << "bench --url " << o.url << ": GET /v1/models is not an OpenAI model list: " << e.what();
    }
    QS_CHECK(!ids.empty()) << "bench --url " << o.url << ": the server lists no models";
    if (model.empty()) {
      model = ids.front();
    } else {
      bool found = false;
      for (const auto& id : ids) found = found || id == model;
      std::string all;
      for (const auto& id : ids) all += (all.empty() ? "" : ", ") + id;
      QS_CHECK(found) << "bench --url " << o.url << ": the server does not serve '" << model << "' (it serves: "
                      << all << "; see --served-model-name)";
    }
  }

  void run_one(httplib::Client& c, const runtime::RequestParams& p, const runtime::OutputCallback& cb) const {
    json body = {{"model", model},
                 {"prompt", p.prompt},
                 {"max_tokens", p.max_tokens},
                 {"temperature", p.sampling.temperature},
                 {"ignore_eos", p.ignore_eos},
                 {"stream", true},
                 {"stream_options", {{"include_usage", true}}},
                 {"return_token_ids", true}};
    if (p.sampling.temperature > 0) {
      body["seed"] = p.sampling.seed;
      if (p.sampling.top_p < 1.0f) body["top_p"] = p.sampling.top_p;
      if (p.sampling.top_k > 0) body["top_k"] = p.sampling.top_k;
    }
    httplib::Request req;
    req.method = "POST";
    req.path = route(url, "/v1/completions");
    req.set_header("Accept", "text/event-stream");
    req.set_header("Content-Type", "application/json");
    req.body = body.dump();
    int status = 0;
    std::string error_body;
    StreamParser parser(cb);
    req.response_handler = [&](const httplib::Response& r) {
      status = r.status;
      return true;
    };
    req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
      if (status == 200) {
        parser.feed(data, n);
      } else if (error_body.size() < 4096) {
        error_body.append(data, n);
      }
      return true;
    };
    httplib::Response res;
    httplib::Error err = httplib::Error::Success;
    const bool sent = c.send(req, res, err);
    runtime::RequestOutput fin;
    fin.completion_tokens = int32_t(parser.usage_completion >= 0 ? parser.usage_completion : parser.streamed);
    if (!sent) {
      fin.finish = runtime::FinishReason::kError;
      fin.error = "connection: " + httplib::to_string(err);
    } else if (status != 200) {
      fin.finish = runtime::FinishReason::kError;
      fin.error = error_message(status, error_body.empty() ? res.body : error_body);
    } else if (!parser.error.empty()) {
      fin.finish = runtime::FinishReason::kError;
      fin.error = "stream error: " + parser.error;
    } else if (!parser.done) {
      fin.finish = runtime::FinishReason::kError;
      fin.error = "the stream ended without 'data: [DONE]'";
    } else if (parser.finish == runtime::FinishReason::kNone) {
      fin.finish = runtime::FinishReason::kError;
      fin.error = "the stream had no finish_reason";
    } else {
      fin.finish = parser.finish;
    }
    cb(fin);
  }

  void worker() {
    std::unique_ptr<httplib::Client> c = client();
    for (;;) {
      std::pair<runtime::RequestParams, runtime::OutputCallback> job;
      {
        std::unique_lock<std::mutex> lk(mu);
        cv.wait(lk, [&] { return stopping || !queue.empty(); });
        if (queue.empty()) return;
        job = std::move(queue.front());
        queue.pop_front();
      }
      try {
        run_one(*c, job.first, job.second);
      } catch (const std::exception& e) {  // never leave the driver waiting for a final event
        runtime::RequestOutput fin;
        fin.finish = runtime::FinishReason::kError;
        fin.error = std::string("client: ") + e.what();
        job.second(fin);
        c = client();
      }
    }
  }
};

HttpBenchClient::HttpBenchClient(HttpBenchClientOptions o) : impl_(std::make_unique<Impl>()) {
  QS_CHECK(o.connections >= 1) << "bench --url: connections must be >= 1, got " << o.connections;
  impl_->o = std::move(o);
  impl_->url = parse_url(impl_->o.url);
  impl_->model = impl_->o.model;
  impl_->check_server();
  for (int i = 0; i < impl_->o.connections; ++i) impl_->workers.emplace_back([this] { impl_->worker(); });
}

HttpBenchClient::~HttpBenchClient() {
  {
    std::lock_guard<std::mutex> lk(impl_->mu);
    impl_->stopping = true;
  }
  impl_->cv.notify_all();
  for (auto& t : impl_->workers) t.join();
}

const std::string& HttpBenchClient::model() const { return impl_->model; }

std::optional<HttpBenchClient::EngineCounters> HttpBenchClient::engine_counters() const {
  auto c = impl_->client();
  auto res = c->Get(route(impl_->url, "/metrics").c_str());
  if (!res || res->status != 200) return std::nullopt;
  EngineCounters e;
  int found = 0;
  std::istringstream in(res->body);
  std::string line;
  while (std::getline(in, line)) {
    const size_t sp = line.rfind(' ');
    if (line.empty() || line[0] == '#' || sp == std::string::npos) continue;
    const std::string name = line.substr(0, sp);
    int64_t* dst = name == "qserve_prefix_cache_queries_total" ? &e.prefix_query_tokens
                   : name == "qserve_prefix_cache_hits_total"  ? &e.prefix_hit_tokens
                   : name == "qserve_preemptions_total"        ? &e.preemptions
                                                               : nullptr;
    if (!dst) continue;
    try {
      *dst = int64_t(std::stod(line.substr(sp + 1)));
      ++found;
    } catch (const std::exception&) {
      return std::nullopt;
    }
  }
  if (found != 3) return std::nullopt;
  return e;
}

runtime::SubmitFn HttpBenchClient::submit_fn() {
  return [this](runtime::RequestParams p, runtime::OutputCallback cb) {
    {
      std::lock_guard<std::mutex> lk(impl_->mu);
      impl_->queue.emplace_back(std::move(p), std::move(cb));
    }
    impl_->cv.notify_one();
  };
}

}  // namespace qs::server
