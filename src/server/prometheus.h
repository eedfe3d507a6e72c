// GET /metrics: the engine's metrics (runtime::EngineMetrics) and the HTTP server's counters in the Prometheus
// text exposition format (version 0.0.4): counters end in _total, histograms have cumulative _bucket{le=...}
// series ending with le="+Inf", then _sum and _count. Names are prefixed qserve_.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "runtime/engine.h"

namespace qs::server {

struct HttpCounters {
  std::map<int, int64_t> responses_by_status;  // every answered HTTP request
  int64_t in_flight = 0;                       // generation requests being served
  int64_t client_disconnects = 0;              // generation requests aborted because the client went away
};

std::string prometheus_text(const runtime::EngineMetrics& m, const HttpCounters& h);

}  // namespace qs::server
