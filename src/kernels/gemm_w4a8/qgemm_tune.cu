// Measured plan selection (qgemm_tune.h): host code over qgemm_run, CUDA graphs and events.
#include "kernels/gemm_w4a8/qgemm_tune.h"

#include <algorithm>
#include <string>

#include "kernels/common/cuda_check.h"

namespace qs::kernels {
namespace {

bool same_plan(const QGemmPlan& a, const QGemmPlan& b) {
  return a.config == b.config && a.splits == b.splits && a.global_split == b.global_split &&
         a.stream_k_ctas == b.stream_k_ctas && a.raster_m == b.raster_m;
}

// Events and a graph, released on every path.
struct TimingState {
  cudaEvent_t e0 = nullptr, e1 = nullptr;
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  ~TimingState() {
    if (exec) cudaGraphExecDestroy(exec);
    if (graph) cudaGraphDestroy(graph);
    if (e0) cudaEventDestroy(e0);
    if (e1) cudaEventDestroy(e1);
  }
};

Status launch_all(const std::vector<QGemmParams>& calls, const std::vector<const QGemmPrepared*>& preps,
                  const QGemmPlan& plan, void* workspace, cudaStream_t s) {
  for (size_t i = 0; i < calls.size(); ++i) {
    QGemmParams p = calls[i];
    p.workspace = workspace;
    QS_RETURN_IF_ERROR(qgemm_run(p, plan, s, preps[i]));
  }
  return Status::ok();
}

// Median microseconds per call of `plan` over `replays` replays of one graph of all the calls.
Status time_plan(const std::vector<QGemmParams>& calls, const std::vector<const QGemmPrepared*>& preps,
                 const QGemmPlan& plan, void* workspace, cudaStream_t s, int replays, double* us) {
  QS_RETURN_IF_ERROR(launch_all(calls, preps, plan, workspace, s));  // warm-up, and argument errors outside capture
  QS_CUDA_RETURN(cudaStreamSynchronize(s));
  TimingState t;
  QS_CUDA_RETURN(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  const Status launched = launch_all(calls, preps, plan, workspace, s);
  const cudaError_t ended = cudaStreamEndCapture(s, &t.graph);
  QS_RETURN_IF_ERROR(launched);
  QS_CUDA_RETURN(ended);
  QS_CUDA_RETURN(cudaGraphInstantiate(&t.exec, t.graph, 0));
  QS_CUDA_RETURN(cudaEventCreate(&t.e0));
  QS_CUDA_RETURN(cudaEventCreate(&t.e1));
  QS_CUDA_RETURN(cudaGraphLaunch(t.exec, s));
  std::vector<float> ms;
  for (int r = 0; r < std::max(1, replays); ++r) {
    QS_CUDA_RETURN(cudaEventRecord(t.e0, s));
    QS_CUDA_RETURN(cudaGraphLaunch(t.exec, s));
    QS_CUDA_RETURN(cudaEventRecord(t.e1, s));
    QS_CUDA_RETURN(cudaEventSynchronize(t.e1));
    float v = 0;
    QS_CUDA_RETURN(cudaEventElapsedTime(&v, t.e0, t.e1));
    ms.push_back(v);
  }
  std::sort(ms.begin(), ms.end());
  *us = double(ms[ms.size() / 2]) * 1000.0 / double(calls.size());
  return Status::ok();
}

}  // namespace

size_t qgemm_tune_workspace_bytes(WeightFormat v, int m, int n, int k, int num_sms, int sm_version,
                                  const QGemmTuneOptions& opt) {
  size_t most = 0;
  for (const QGemmPlan& p : qgemm_plan_candidates(v, m, n, k, num_sms, sm_version, opt.max_split_plans))
    most = std::max(most, p.workspace_bytes);
  return most;
}

Status qgemm_tune(const std::vector<QGemmParams>& calls, const std::vector<const QGemmPrepared*>& preps,
                  cudaStream_t stream, void* workspace, size_t workspace_bytes, const QGemmTuneOptions& opt,
                  QGemmTuneResult* out) {
  if (!out) return Status::error("qgemm_tune: null result");
  if (calls.empty() || preps.size() != calls.size())
    return Status::error("qgemm_tune: needs one or more calls and one prepared weight per call");
  const QGemmParams& c0 = calls[0];
  for (size_t i = 0; i < calls.size(); ++i) {
    const QGemmParams& c = calls[i];
    if (c.variant != c0.variant || c.m != c0.m || c.n != c0.n || c.k != c0.k || c.epilogue != c0.epilogue)
      return Status::error("qgemm_tune: the calls differ in format, shape or epilogue (call " + std::to_string(i) +
                           ")");
    if (!preps[i] || !preps[i]->ready || preps[i]->w != c.w)
      return Status::error("qgemm_tune: call " + std::to_string(i) + " has no prepared weights of its own");
  }
  const QGemmPrepared& pr = *preps[0];
  const std::vector<QGemmPlan> cands =
      qgemm_plan_candidates(c0.variant, c0.m, c0.n, c0.k, pr.num_sms, pr.sm_version, opt.max_split_plans);
  QGemmTuneResult r;
  r.model_plan = cands.front();
  if (r.model_plan.workspace_bytes > workspace_bytes || (r.model_plan.workspace_bytes > 0 && !workspace))
    return Status::error("qgemm_tune: the workspace (" + std::to_string(workspace_bytes) +
                         " bytes) is smaller than the cost model's plan needs (" +
                         std::to_string(r.model_plan.workspace_bytes) + ")");
  QS_RETURN_IF_ERROR(time_plan(calls, preps, r.model_plan, workspace, stream, opt.replays, &r.model_us));
  r.plan = r.model_plan;
  r.us = r.model_us;
  r.candidates = 1;
  for (size_t i = 1; i < cands.size(); ++i) {
    if (cands[i].workspace_bytes > workspace_bytes || (cands[i].workspace_bytes > 0 && !workspace)) continue;
    double us = 0;
    QS_RETURN_IF_ERROR(time_plan(calls, preps, cands[i], workspace, stream, opt.replays, &us));
    ++r.candidates;
    if (us < r.us) {
      r.us = us;
      r.plan = cands[i];
    }
  }
  if (!same_plan(r.plan, r.model_plan)) {
    // Confirm against noise: the model's plan and the winner timed alternately kConfirmRounds more times; the median
    // of each one's rounds counts (not the minimum: a plan whose time varies between launches would win by luck).
    constexpr int kConfirmRounds = 3;
    std::vector<double> tm, tb;
    for (int round = 0; round < kConfirmRounds; ++round) {
      double a = 0, b = 0;
      QS_RETURN_IF_ERROR(time_plan(calls, preps, r.model_plan, workspace, stream, opt.replays, &a));
      QS_RETURN_IF_ERROR(time_plan(calls, preps, r.plan, workspace, stream, opt.replays, &b));
      tm.push_back(a);
      tb.push_back(b);
    }
    std::sort(tm.begin(), tm.end());
    std::sort(tb.begin(), tb.end());
    r.model_us = tm[kConfirmRounds / 2];
    r.us = tb[kConfirmRounds / 2];
    if (r.us > r.model_us * (1.0 - opt.min_gain)) {
      r.plan = r.model_plan;
      r.us = r.model_us;
    }
  }
  *out = r;
  return Status::ok();
}

}  // namespace qs::kernels
