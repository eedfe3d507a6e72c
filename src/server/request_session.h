// The bridge between one HTTP request and its engine requests (one per choice: prompts x n). Engine callbacks
// (on the engine thread) only append events to a queue under a mutex and notify; the HTTP thread waits on it
// with a timeout so it can also watch its client. The queue state is shared with the callbacks, so it outlives
// the session when the engine still holds them. Destroying a session with unfinished choices aborts them.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <vector>

#include "server/generation_backend.h"

namespace qs::server {

struct ChoiceEvent {
  int choice = 0;
  runtime::RequestOutput out;
};

class RequestSession {
 public:
  explicit RequestSession(GenerationBackend& backend);
  ~RequestSession();
  RequestSession(const RequestSession&) = delete;
  RequestSession& operator=(const RequestSession&) = delete;

  // Submits the next choice (index = number of choices added before); throws what the backend's submit throws.
  void add(runtime::RequestParams params);
  int choices() const { return int(ids_.size()); }
  // Moves the queued events into `out` (cleared first); waits up to `timeout` when none are queued.
  // Returns whether any arrived.
  bool wait(std::vector<ChoiceEvent>& out, std::chrono::milliseconds timeout);
  // Every added choice has had its final event (as seen by wait()).
  bool all_finished() const { return finished_seen_ == int(ids_.size()); }
  void abort_all();

 private:
  struct Queue {
    std::mutex mu;
    std::condition_variable cv;
    std::deque<ChoiceEvent> events;
  };
  GenerationBackend& backend_;
  std::shared_ptr<Queue> q_;
  std::vector<uint64_t> ids_;
  std::vector<bool> finished_;
  int finished_seen_ = 0;
  bool aborted_ = false;
};

}  // namespace qs::server
