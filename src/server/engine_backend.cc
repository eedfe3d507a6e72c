// GenerationBackend over the runtime Engine: a thin forwarding adapter (see generation_backend.h).
#include "runtime/engine.h"
#include "server/generation_backend.h"

namespace qs::server {
namespace {

class EngineBackend final : public GenerationBackend {
 public:
  explicit EngineBackend(runtime::Engine& e) : e_(e) {}
  uint64_t submit(runtime::RequestParams p, runtime::OutputCallback cb) override { return e_.submit(std::move(p), std::move(cb)); }
  void abort(uint64_t id) override { e_.abort(id); }
  runtime::EngineMetrics metrics() const override { return e_.metrics(); }
  int64_t max_context() const override { return e_.max_context(); }
  int32_t vocab_size() const override { return int32_t(e_.executor().config().vocab_size); }
  std::vector<int32_t> eos_token_ids() const override {
    std::vector<int32_t> ids;
    for (auto id : e_.executor().config().eos_token_ids) ids.push_back(int32_t(id));
    return ids;
  }

 private:
  runtime::Engine& e_;
};

}  // namespace

std::unique_ptr<GenerationBackend> make_engine_backend(runtime::Engine& engine) {
  return std::make_unique<EngineBackend>(engine);
}

}  // namespace qs::server
