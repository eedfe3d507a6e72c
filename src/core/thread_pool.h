// A small fixed thread pool and parallel_for. Work is split into contiguous chunks, each index handled by
// exactly one thread, so results never depend on the thread count (no cross-thread reductions): runs are
// bit-identical. Threads: QSERVE_THREADS, else std::thread::hardware_concurrency().
#pragma once

#include <cstdint>
#include <functional>

namespace qs {

int num_threads();
// Calls fn(begin, end) over [0, n) in chunks of at least `grain` indices, possibly in parallel; returns when all
// chunks are done. Exceptions thrown by fn are rethrown (the first one) on the calling thread.
void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn, int64_t grain = 1);

}  // namespace qs
