// RequestSession: engine callbacks -> a queue the HTTP thread waits on (see request_session.h).
#include "server/request_session.h"

namespace qs::server {

RequestSession::RequestSession(GenerationBackend& backend) : backend_(backend), q_(std::make_shared<Queue>()) {}

RequestSession::~RequestSession() {
  if (!all_finished()) abort_all();
}

void RequestSession::add(runtime::RequestParams params) {
  const int choice = int(ids_.size());
  std::shared_ptr<Queue> q = q_;
  const uint64_t id = backend_.submit(std::move(params), [q, choice](const runtime::RequestOutput& o) {
    {
      std::lock_guard<std::mutex> lk(q->mu);
      q->events.push_back({choice, o});
    }
    q->cv.notify_one();
  });
  ids_.push_back(id);
  finished_.push_back(false);
}

bool RequestSession::wait(std::vector<ChoiceEvent>& out, std::chrono::milliseconds timeout) {
  out.clear();
  {
    std::unique_lock<std::mutex> lk(q_->mu);
    if (q_->events.empty()) q_->cv.wait_for(lk, timeout, [&] { return !q_->events.empty(); });
    while (!q_->events.empty()) {
      out.push_back(std::move(q_->events.front()));
      q_->events.pop_front();
    }
  }
  for (const ChoiceEvent& e : out) {
    if (e.out.finish != runtime::FinishReason::kNone && !finished_[e.choice]) {
      finished_[e.choice] = true;
      ++finished_seen_;
    }
  }
  return !out.empty();
}

void RequestSession::abort_all() {
  if (aborted_) return;
  aborted_ = true;
  for (size_t i = 0; i < ids_.size(); ++i)
    if (!finished_[i]) backend_.abort(ids_[i]);
}

}  // namespace qs::server
