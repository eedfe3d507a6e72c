// Prometheus text rendering of the engine and server metrics (see prometheus.h).
#include "server/prometheus.h"

#include <cstdio>
#include <cstdlib>
#include <sstream>

namespace qs::server {
namespace {

// The shortest %g text that reads back as the same double (0.1, not 0.10000000000000001).
std::string num(double v) {
  char buf[64];
  for (int prec = 6; prec <= 17; ++prec) {
    std::snprintf(buf, sizeof buf, "%.*g", prec, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}

void header(std::ostringstream& o, const char* name, const char* type, const char* help) {
  o << "# HELP " << name << ' ' << help << "\n# TYPE " << name << ' ' << type << '\n';
}

void scalar(std::ostringstream& o, const char* name, const char* type, const char* help, double v) {
  header(o, name, type, help);
  o << name << ' ' << num(v) << '\n';
}

void histogram(std::ostringstream& o, const char* name, const char* help, const runtime::EngineMetrics::Histogram& h) {
  header(o, name, "histogram", help);
  // counts[i] pairs with bounds[i]; the last count is +Inf (also when bounds has no entry for it).
  int64_t inf = h.count;
  for (size_t i = 0; i < h.counts.size(); ++i) {
    if (i < h.bounds.size()) {
      o << name << "_bucket{le=\"" << num(h.bounds[i]) << "\"} " << h.counts[i] << '\n';
    } else {
      inf = h.counts[i];
    }
  }
  o << name << "_bucket{le=\"+Inf\"} " << inf << '\n';
  o << name << "_sum " << num(h.sum) << '\n';
  o << name << "_count " << h.count << '\n';
}

}  // namespace

std::string prometheus_text(const runtime::EngineMetrics& m, const HttpCounters& h) {
  std::ostringstream o;
  header(o, "qserve_http_requests_total", "counter", "HTTP requests answered, by status code.");
  for (const auto& [status, n] : h.responses_by_status)
    o << "qserve_http_requests_total{code=\"" << status << "\"} " << n << '\n';
  scalar(o, "qserve_http_requests_in_flight", "gauge", "Generation requests being served over HTTP.", double(h.in_flight));
  scalar(o, "qserve_client_disconnects_total", "counter",
         "Generation requests aborted because the client disconnected.", double(h.client_disconnects));
  header(o, "qserve_requests_finished_total", "counter", "Engine requests finished, by finish reason.");
  const char* reasons[5] = {"none", "stop", "length", "abort", "error"};
  for (int i = 1; i < 5; ++i)
    o << "qserve_requests_finished_total{reason=\"" << reasons[i] << "\"} " << m.requests_finished[i] << '\n';
  scalar(o, "qserve_num_requests_waiting", "gauge", "Requests waiting to be scheduled.", double(m.waiting));
  scalar(o, "qserve_num_requests_running", "gauge", "Requests running (holding KV pages).", double(m.running));
  scalar(o, "qserve_prompt_tokens_total", "counter", "Prompt tokens processed.", double(m.prompt_tokens));
  scalar(o, "qserve_generation_tokens_total", "counter", "Tokens generated.", double(m.generated_tokens));
  scalar(o, "qserve_kv_pages_total", "gauge", "KV cache pages in the pool.", double(m.pages_total));
  scalar(o, "qserve_kv_pages_used", "gauge", "KV cache pages held by requests.", double(m.pages_used));
  scalar(o, "qserve_kv_pages_cached", "gauge", "KV cache pages kept only by the prefix cache.", double(m.pages_cached));
  scalar(o, "qserve_kv_pages_free", "gauge", "KV cache pages free.", double(m.pages_free));
  scalar(o, "qserve_kv_cache_usage_ratio", "gauge", "Fraction of KV pages held by requests.",
         m.pages_total > 0 ? double(m.pages_used) / double(m.pages_total) : 0.0);
  scalar(o, "qserve_prefix_cache_queries_total", "counter", "Prompt tokens looked up in the prefix cache.",
         double(m.prefix_query_tokens));
  scalar(o, "qserve_prefix_cache_hits_total", "counter", "Prompt tokens found in the prefix cache.",
         double(m.prefix_hit_tokens));
  scalar(o, "qserve_prefix_cache_hit_rate", "gauge", "Prefix cache hits / queries (tokens) since start.",
         m.prefix_query_tokens > 0 ? double(m.prefix_hit_tokens) / double(m.prefix_query_tokens) : 0.0);
  scalar(o, "qserve_preemptions_total", "counter", "Requests preempted to free KV pages.", double(m.preemptions));
  scalar(o, "qserve_engine_steps_total", "counter", "Engine steps (executor calls).", double(m.steps));
  histogram(o, "qserve_time_to_first_token_seconds", "Time from submission to the first generated token.", m.ttft);
  histogram(o, "qserve_inter_token_latency_seconds", "Time between consecutive generated tokens.", m.itl);
  histogram(o, "qserve_e2e_request_latency_seconds", "Time from submission to the final event.", m.e2e);
  return o.str();
}

}  // namespace qs::server
