// GPU tests of the quantized GEMMs (kernels/gemm_w4a8, binding backends/cuda/gemm_w4a8) against the exact CPU
// reference (ref_cpu/gemm_w4a8): INT32 accumulators bit-exact (debug acc_out path), and FP16 outputs equal to
// the reference FP32 result rounded to FP16 (tolerance: 0, because the GPU epilogue performs the same IEEE fp32
// operations, in the same order, without contraction: acc*s*sx - sz*xsum + bias + residual, then one
// round-to-nearest-even). Awkward M (1, 3, 17, 67, 257, 1000), every tile config of qgemm_configs.def with every
// split-K factor it supports (sm90: thread-block clusters of 1..8 and the global workspace), the plans of the
// M 64-512 regime, the Llama-3-8B and Llama-2-70B linear shapes; outputs poisoned (NaN) before each launch, so an unwritten element
// fails; no NaN anywhere. Every check also runs the SiLU*up epilogue (kSiluMul) against the plain outputs of the
// same plan (tolerance at check_problem). Skips without a GPU.
#include <algorithm>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cuda_runtime.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "backends/cuda/gemm_w4a8.h"
#include "backends/gemm_test_data.h"
#include "backends/ref_cpu/gemm_w4a8.h"
#include "kernels/common/cuda_check.h"
#include "kernels/common/device_buffer.h"
#include "kernels/common/guards.h"
#include "kernels/common/pdl.h"
#include "kernels/gemm_w4a8/qgemm_kernel.cuh"
#include "kernels/gemm_w4a8/qgemm_tune.h"
#include "kernels/norm_quant/norm_quant.h"

namespace qs {
namespace {

using ::testing::HasSubstr;

// FP16 bits -> an integer that orders like the value (ulp distance = difference).
int fp16_ordinal(uint16_t b) { return (b & 0x8000) ? -int(b & 0x7fff) : int(b); }

// A call over device activations (x, sx, xsum, qsum, bias) for m tokens; output, residual and workspace unset.
cuda::QGemmCall act_call(int m, const DeviceBuffer<int8_t>& x, const DeviceBuffer<uint16_t>& sx,
                         const DeviceBuffer<uint16_t>& xsum, const DeviceBuffer<int32_t>& qsum,
                         const DeviceBuffer<uint16_t>& bias) {
  cuda::QGemmCall call;
  call.m = m;
  call.x = x.get();
  call.sx = sx.get();
  call.xsum = xsum.get();
  call.qsum = qsum.get();
  call.bias = bias.get();
  return call;
}

// Runs one problem on the GPU with a given plan override and checks INT32 and FP16 results against the reference.
// stream_k_ctas > 0 (with a config override): a persistent stream-K plan over that many CTAs. raster_m > 0: that
// launch order (token tiles per raster group) instead of the default.
void check_problem(const test::QGemmProblem& pr, int splits_override, int config_override = -1,
                   bool global_split = false, int stream_k_ctas = 0, int raster_m = 0) {
  const int64_t m = pr.m, n = pr.n;
  SCOPED_TRACE(testing::Message() << weight_format_name(pr.variant) << " m=" << m << " n=" << n
                                  << " k=" << pr.k << " splits=" << splits_override << " config=" << config_override
                                  << (global_split ? " global split" : "") << " stream-K ctas=" << stream_k_ctas
                                  << " raster=" << raster_m);
  std::vector<float> ref(size_t(m * n));
  std::vector<int32_t> ref_acc(size_t(m * n));
  ref_cpu::qgemm(pr.weights(), pr.acts(), pr.epilogue(), ref.data(), ref_acc.data());

  const cuda::QGemmDeviceWeights w = cuda::QGemmDeviceWeights::upload(pr.weights());
  DeviceBuffer<int8_t> x(pr.xq);
  DeviceBuffer<uint16_t> sx(pr.sx), xsum(pr.xsum), bias(pr.bias), residual(pr.residual);
  DeviceBuffer<int32_t> qsum(pr.qsum);
  DeviceBuffer<uint16_t> y(size_t(m * n));
  DeviceBuffer<int32_t> acc(size_t(m * n));
  DeviceBuffer<int> bad(1);
  kernels::QGemmPlan plan = w.plan(int(m), splits_override);
  if (config_override >= 0)
    plan = kernels::qgemm_plan_for(pr.variant, int(m), int(n), int(pr.k), config_override,
                                   splits_override > 0 ? splits_override : 1, global_split);
  if (config_override >= 0 && stream_k_ctas > 0)
    plan = kernels::qgemm_plan_stream_k(pr.variant, int(m), int(n), int(pr.k), config_override, stream_k_ctas);
  if (raster_m > 0) plan.raster_m = raster_m;
  SCOPED_TRACE(testing::Message() << "plan " << kernels::qgemm_config_name(plan.config) << " x" << plan.splits
                                  << (plan.global_split ? " (global split)" : ""));
  DeviceBuffer<uint8_t> ws(plan.workspace_bytes);
  if (ws.size()) QS_CUDA_CHECK(cudaMemset(ws.get(), 0, ws.size()));  // once: the kernels leave the split-K counters zeroed
  cuda::QGemmCall call = act_call(int(m), x, sx, xsum, qsum, bias);
  call.residual = residual.get();
  call.workspace = ws.get();

  // 1) INT32 accumulators, bit-exact. Poison with 0x7f7f7f7f first.
  QS_CUDA_CHECK(cudaMemset(acc.get(), 0x7f, acc.size() * sizeof(int32_t)));
  call.acc_out = acc.get();
  const Status st_acc = w.run(plan, call, nullptr);
  ASSERT_TRUE(st_acc.is_ok()) << st_acc.message();
  QS_CUDA_CHECK(cudaDeviceSynchronize());
  const std::vector<int32_t> got_acc = acc.download();
  int64_t acc_bad = 0;
  for (size_t i = 0; i < got_acc.size(); ++i)
    if (got_acc[i] != ref_acc[i] && acc_bad++ < 5)
      ADD_FAILURE() << "acc mismatch at (" << i / n << ", " << i % n << "): " << got_acc[i] << " vs " << ref_acc[i];
  EXPECT_EQ(acc_bad, 0);

  // 2) FP16 output, poisoned with NaN before the launch.
  call.acc_out = nullptr;
  call.y = y.get();
  ASSERT_TRUE(kernels::poison_f16(y.get(), int64_t(y.size()), nullptr).is_ok());
  const Status st = w.run(plan, call, nullptr);
  ASSERT_TRUE(st.is_ok()) << st.message();
  ASSERT_TRUE(kernels::count_nonfinite_f16(y.get(), int64_t(y.size()), bad.get(), nullptr).is_ok());
  QS_CUDA_CHECK(cudaDeviceSynchronize());
  EXPECT_EQ(bad.download()[0], 0) << "non-finite or unwritten outputs";
  const std::vector<uint16_t> got = y.download();
  int64_t y_bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const uint16_t want = float_to_fp16(ref[i]);
    if (got[i] != want && y_bad++ < 5)
      ADD_FAILURE() << "y mismatch at (" << i / n << ", " << i % n << "): " << fp16_to_float(got[i]) << " vs "
                    << fp16_to_float(want) << " (ref fp32 " << ref[i] << ")";
  }
  EXPECT_EQ(y_bad, 0);

  // 3) The SiLU*up epilogue (rows 2j, 2j + 1 taken as a gate/up pair) against the plain FP16 outputs of the same
  // plan without a residual: h[m, j] = fp16(silu(g) * u) of the pair. Tolerance: one FP16 ulp, because the epilogue
  // uses the fast exp and divide (a few fp32 ulp off the host's exact-rounded fp32 value, which moves the FP16
  // rounding only near a tie); at least 99% of the outputs bit-exact.
  call.residual = nullptr;
  ASSERT_TRUE(w.run(plan, call, nullptr).is_ok());
  QS_CUDA_CHECK(cudaDeviceSynchronize());
  const std::vector<uint16_t> plain = y.download();
  DeviceBuffer<uint16_t> h(size_t(m * n / 2));
  ASSERT_TRUE(kernels::poison_f16(h.get(), int64_t(h.size()), nullptr).is_ok());
  call.y = h.get();
  call.epilogue = kernels::QGemmEpilogue::kSiluMul;
  ASSERT_TRUE(w.run(plan, call, nullptr).is_ok());
  QS_CUDA_CHECK(cudaDeviceSynchronize());
  const std::vector<uint16_t> got_h = h.download();
  int64_t h_bad = 0, h_inexact = 0;
  for (size_t i = 0; i < got_h.size(); ++i) {
    const size_t r = i / size_t(n / 2), j = i % size_t(n / 2);
    const float g = fp16_to_float(plain[r * size_t(n) + 2 * j]), u = fp16_to_float(plain[r * size_t(n) + 2 * j + 1]);
    const uint16_t want = float_to_fp16((g / (1.0f + std::exp(-g))) * u);
    if (got_h[i] == want) continue;
    ++h_inexact;
    const int ulps = std::abs(fp16_ordinal(got_h[i]) - fp16_ordinal(want));
    if (ulps > 1 && h_bad++ < 5)
      ADD_FAILURE() << "silu*up mismatch at (" << r << ", " << j << "): " << fp16_to_float(got_h[i]) << " vs "
                    << fp16_to_float(want) << " (g " << g << ", u " << u << ")";
  }
  EXPECT_EQ(h_bad, 0);
  EXPECT_LE(h_inexact, int64_t(got_h.size()) / 100);
}

int sm_version() {
  int dev = 0, major = 0, minor = 0;
  QS_CUDA_CHECK(cudaGetDevice(&dev));
  QS_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  QS_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
  return major * 10 + minor;
}
// Tile configs this GPU can run: the sm80 (mma.sync) ones everywhere, the wgmma ones on sm_90 only.
std::vector<int> runnable_configs() {
  std::vector<int> c;
  for (int i = 0; i < kernels::qgemm_num_configs(); ++i)
    if (!kernels::qgemm_config_is_sm90(i) || sm_version() == 90) c.push_back(i);
  return c;
}

class QGemmGpu : public ::testing::TestWithParam<WeightFormat> {};

// Every config of the table (qgemm_configs.def) that this GPU can run, at awkward token counts (partial token
// and channel tiles), unsplit and split over K.
TEST_P(QGemmGpu, AwkwardTokenCountsEveryConfig) {
  QS_REQUIRE_GPU();
  for (int64_t m : {1, 3, 17, 67, 257, 1000}) {
    const auto pr = test::make_qgemm_problem(GetParam(), m, 208, 640, 100 + m, /*bias=*/m % 2 == 1, /*res=*/m > 3);
    check_problem(pr, 0);  // the planned config and split
    for (int config : runnable_configs()) {
      check_problem(pr, 1, config);
      check_problem(pr, 3, config);
      if (kernels::qgemm_config_is_sm90(config)) check_problem(pr, 3, config, /*global_split=*/true);
    }
  }
}

// Every split-K factor each config supports (sm90: cluster sizes 1..8, and the same through the global
// workspace; sm80: up to 10 here), K = 10 k tiles, so uneven splits (3, 4, 7) occur.
TEST_P(QGemmGpu, SplitKFactors) {
  QS_REQUIRE_GPU();
  const auto pr = test::make_qgemm_problem(GetParam(), 33, 128, 1280, 7, true, true);
  for (int config : runnable_configs())
    for (int splits : {1, 2, 3, 4, 5, 6, 7, 8, 10}) {
      if (splits > kernels::qgemm_max_splits(config, 1280)) continue;
      check_problem(pr, splits, config);
      if (kernels::qgemm_config_is_sm90(config) && splits > 1) check_problem(pr, splits, config, true);
    }
}

// What the plan picks in the M 64-512 regime on Llama-3-8B shapes (the cost model's choices: split clusters,
// BM=256 tiles) is bit-exact too; and K = 4096 split 2 and 8 ways (cluster and global) for every sm90 config at
// M = 130 (a partial token tile). Sizes bounded by the CPU reference's time.
TEST_P(QGemmGpu, ServingRegimePlans) {
  QS_REQUIRE_GPU();
  for (int64_t m : {64, 130, 300}) check_problem(test::make_qgemm_problem(GetParam(), m, 4096, 4096, 31 + m), 0);
  check_problem(test::make_qgemm_problem(GetParam(), 300, 1024, 14336, 5, true, true), 0);
  const auto pr = test::make_qgemm_problem(GetParam(), 130, 512, 4096, 77, false, true);
  for (int config : runnable_configs())
    if (kernels::qgemm_config_is_sm90(config))
      for (int splits : {2, 8}) {
        check_problem(pr, splits, config);
        check_problem(pr, splits, config, true);
      }
}

// Persistent stream-K on every sm90 config: CTA counts that cut tiles anywhere (a tile shared by up to 10 CTAs,
// a CTA spanning several tiles, ranges that end mid-tile), partial token and channel tiles, every variant. Each
// check runs the plan twice on one workspace (INT32 then FP16), so the per-tile counters must reset themselves.
TEST_P(QGemmGpu, StreamK) {
  QS_REQUIRE_GPU();
  const test::QGemmProblem problems[] = {
      test::make_qgemm_problem(GetParam(), 67, 208, 1280, 11, true, true),   // 10 k tiles
      test::make_qgemm_problem(GetParam(), 300, 512, 1152, 12, false, true),  // 9 k tiles, 3 token tiles of 128
      test::make_qgemm_problem(GetParam(), 5, 4096, 512, 13, true, false),    // more tiles than CTAs
  };
  for (const auto& pr : problems)
    for (int config : runnable_configs())
      if (kernels::qgemm_config_is_sm90(config))
        for (int ctas : {1, 3, 7, 16, 61, 132, 100000}) check_problem(pr, 1, config, false, ctas);
}

// Launch orders (qgemm_raster_tile): raster groups of 1 (weight tiles fastest), 2, 3 (a short last group) and more
// token tiles than there are (token tiles fastest) on every sm90 config, unsplit; a group of 3 also split 2 ways
// (cluster and global) and as stream-K: the same integers and outputs in any order. 1000 tokens = 4..32 token
// tiles, 384 channels = 2..3 channel tiles (a partial one at BN 256).
TEST_P(QGemmGpu, RasterOrders) {
  QS_REQUIRE_GPU();
  const auto pr = test::make_qgemm_problem(GetParam(), 1000, 384, 256, 21, true, true);
  for (int config : runnable_configs())
    if (kernels::qgemm_config_is_sm90(config)) {
      for (int raster : {1, 2, 3, 1000}) check_problem(pr, 1, config, false, 0, raster);
      check_problem(pr, 2, config, false, 0, 3);
      check_problem(pr, 2, config, true, 0, 3);
      check_problem(pr, 1, config, false, 61, 3);
    }
}

TEST_P(QGemmGpu, ModelShapes) {
  QS_REQUIRE_GPU();
  const int64_t shapes[][2] = {{6144, 4096},  {4096, 4096},  {28672, 4096}, {4096, 14336},
                               {10240, 8192}, {8192, 8192}, {57344, 8192}, {8192, 28672}};
  for (const auto& s : shapes)
    for (int64_t m : {3, 67, 1000}) {
      // Keep the CPU reference time bounded: m = 67 up to 100M weights, m = 1000 (the BN=256 wgmma tiles) on 4096^2.
      if (m == 67 && s[0] * s[1] > 100'000'000) continue;
      if (m == 1000 && s[0] * s[1] > 4096 * 4096) continue;
      check_problem(test::make_qgemm_problem(GetParam(), m, s[0], s[1], uint64_t(s[0] + m), true, false), 0);
    }
}

// g128 on Hopper runs an unsigned-weight wgmma (w8 + 128) and takes 128 * qsum off the accumulators: saturated
// activations (every code +-127, whole rows of one sign) at the largest K of the paper's models (Llama-2-70B's
// down_proj, 28672) put the biased INT32 sums near 128 * 127 * K = 4.7e8 (and the correction as large) on every
// path that can hold k tile 0: unsplit, cluster and global split-K, stream-K.
TEST(QGemmGpuG128, SaturatedActivationsAtTheLargestK) {
  QS_REQUIRE_GPU();
  auto pr = test::make_qgemm_problem(WeightFormat::kW4A8G128, 19, 256, 28672, 41, true, false);
  for (int64_t i = 0; i < pr.m; ++i) {
    int32_t sum = 0;
    for (int64_t j = 0; j < pr.k; ++j) {
      const int8_t v = i % 3 == 0 ? 127 : i % 3 == 1 ? -127 : (j % 7 == 0 ? -127 : 127);
      pr.xq[size_t(i * pr.k + j)] = v;
      sum += v;
    }
    pr.qsum[size_t(i)] = sum;
  }
  check_problem(pr, 0);
  for (int config : runnable_configs())
    if (kernels::qgemm_config_is_sm90(config)) {
      check_problem(pr, 8, config);
      check_problem(pr, 3, config, /*global_split=*/true);
      check_problem(pr, 1, config, false, 5);
    }
}

// Programmatic dependent launch (kernels/common/pdl.h): the GEMM and quantization kernels may start while the
// previous kernel of the stream runs, and must not touch what it produces (or still reads) before pdl_wait. The
// engine's in-place pattern: y = W x + y (the residual is the output the previous launch wrote), then x = quant(y)
// (overwriting the activations the previous GEMM read), 8 times back to back on one stream, for each plan kind
// (the plan's own, cluster and global split-K, stream-K) with grids that leave SMs free for the next kernel; the
// result must be bit-identical to the same launches with the stream synchronized after each one (no overlap).
TEST_P(QGemmGpu, PdlChainEqualsSerializedLaunches) {
  QS_REQUIRE_GPU();
  const kernels::PdlScope pdl_on(true);  // off by default for lone GEMMs (pdl.h)
  const int m = 300, n = 1024, k = 1024;
  const auto pr = test::make_qgemm_problem(GetParam(), m, n, k, 77, true, true);
  const cuda::QGemmDeviceWeights w = cuda::QGemmDeviceWeights::upload(pr.weights());
  std::vector<kernels::QGemmPlan> plans{w.plan(m)};
  if (sm_version() == 90) {
    plans.push_back(kernels::qgemm_plan_for(pr.variant, m, n, k, kernels::kQGemm_sm90_bn128_bm64, 2, false));
    plans.push_back(kernels::qgemm_plan_for(pr.variant, m, n, k, kernels::kQGemm_sm90_bn128_bm64, 3, true));
    plans.push_back(kernels::qgemm_plan_stream_k(pr.variant, m, n, k, kernels::kQGemm_sm90_bn128_bm128, 40));
  }
  DeviceBuffer<int8_t> x(pr.xq);
  DeviceBuffer<uint16_t> sx(pr.sx), xsum(pr.xsum), bias(pr.bias), y(pr.residual);
  DeviceBuffer<int32_t> qsum(pr.qsum);
  cudaStream_t stream = nullptr;
  QS_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  for (const kernels::QGemmPlan& plan : plans) {
    SCOPED_TRACE(testing::Message() << "plan " << kernels::qgemm_config_name(plan.config) << " x" << plan.splits
                                    << (plan.global_split ? " global" : "") << " stream-K " << plan.stream_k_ctas);
    DeviceBuffer<uint8_t> ws(plan.workspace_bytes);
    if (ws.size()) QS_CUDA_CHECK(cudaMemset(ws.get(), 0, ws.size()));
    auto chain = [&](bool serialize) {
      x.upload(pr.xq);
      sx.upload(pr.sx);
      xsum.upload(pr.xsum);
      qsum.upload(pr.qsum);
      y.upload(pr.residual);
      // The uploads run on the legacy stream and may still be in flight (pageable copies return early); `stream`
      // does not wait for it.
      QS_CUDA_CHECK(cudaDeviceSynchronize());
      cuda::QGemmCall call = act_call(m, x, sx, xsum, qsum, bias);
      call.residual = y.get();
      call.y = y.get();
      call.workspace = ws.get();
      kernels::ActQuantParams q;
      q.x = y.get();
      q.rows = m;
      q.cols = n;
      q.out = {x.get(), sx.get(), xsum.get(), qsum.get()};
      for (int i = 0; i < 8; ++i) {
        EXPECT_TRUE(w.run(plan, call, stream).is_ok());
        if (serialize) QS_CUDA_CHECK(cudaStreamSynchronize(stream));
        EXPECT_TRUE(kernels::act_quant(q, stream).is_ok());
        if (serialize) QS_CUDA_CHECK(cudaStreamSynchronize(stream));
      }
      QS_CUDA_CHECK(cudaStreamSynchronize(stream));
      return std::make_pair(y.download(), x.download());
    };
    const auto want = chain(true);
    for (int round = 0; round < 3; ++round) {
      const auto got = chain(false);
      EXPECT_TRUE(got.first == want.first) << "FP16 outputs differ from the serialized chain (round " << round << ")";
      EXPECT_TRUE(got.second == want.second) << "INT8 activations differ from the serialized chain (round " << round
                                             << ")";
    }
  }
  QS_CUDA_CHECK(cudaStreamDestroy(stream));
}

// Measured plan selection (qgemm_tune.h) over two weight copies: it times more than one candidate, returns one of
// qgemm_plan_candidates, reports positive times with the pick no slower than the model's, and the pick's outputs
// (plain and SiLU*up epilogue) are bit-identical to the cost model's plan; a tuned plan set on the prepared weights
// is what qgemm_plan(prep, m) returns for that m only. Error paths: mismatched calls, a too-small workspace.
TEST_P(QGemmGpu, TunedPlanMatchesTheModelPlan) {
  QS_REQUIRE_GPU();
  if (sm_version() != 90) GTEST_SKIP() << "the tuner's candidates are the wgmma kernel's (sm_90)";
  const int m = 200, n = 1024, k = 2048;
  const auto pr = test::make_qgemm_problem(GetParam(), m, n, k, 91, true, false);
  const cuda::QGemmDeviceWeights w0 = cuda::QGemmDeviceWeights::upload(pr.weights());
  const cuda::QGemmDeviceWeights w1 = cuda::QGemmDeviceWeights::upload(pr.weights());
  DeviceBuffer<int8_t> x(pr.xq);
  DeviceBuffer<uint16_t> sx(pr.sx), xsum(pr.xsum), bias(pr.bias), y(size_t(m) * n), h(size_t(m) * n / 2);
  DeviceBuffer<int32_t> qsum(pr.qsum);
  const kernels::QGemmPrepared& p0 = w0.prepared();
  const size_t ws_bytes = kernels::qgemm_tune_workspace_bytes(pr.variant, m, n, k, p0.num_sms, p0.sm_version);
  DeviceBuffer<uint8_t> ws(ws_bytes);
  if (ws_bytes) QS_CUDA_CHECK(cudaMemset(ws.get(), 0, ws_bytes));
  cudaStream_t stream = nullptr;
  QS_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cuda::QGemmCall call = act_call(m, x, sx, xsum, qsum, bias);
  call.y = y.get();
  call.workspace = ws.get();
  const std::vector<kernels::QGemmParams> calls{w0.params(call), w1.params(call)};
  const std::vector<const kernels::QGemmPrepared*> preps{&w0.prepared(), &w1.prepared()};
  kernels::QGemmTuneResult r;
  const Status st = kernels::qgemm_tune(calls, preps, stream, ws.get(), ws_bytes, {}, &r);
  ASSERT_TRUE(st.is_ok()) << st.message();
  EXPECT_GE(r.candidates, 2);
  EXPECT_GT(r.model_us, 0.0);
  EXPECT_GT(r.us, 0.0);
  EXPECT_LE(r.us, r.model_us);
  const auto cands = kernels::qgemm_plan_candidates(pr.variant, m, n, k, p0.num_sms, p0.sm_version, 6);
  const auto same = [](const kernels::QGemmPlan& a, const kernels::QGemmPlan& b) {
    return a.config == b.config && a.splits == b.splits && a.global_split == b.global_split &&
           a.stream_k_ctas == b.stream_k_ctas && a.raster_m == b.raster_m;
  };
  EXPECT_TRUE(same(r.model_plan, w0.plan(m)));
  EXPECT_TRUE(std::any_of(cands.begin(), cands.end(), [&](const auto& c) { return same(c, r.plan); }));
  // Outputs of the pick vs the model's plan, both epilogues.
  for (const auto epi : {kernels::QGemmEpilogue::kLinear, kernels::QGemmEpilogue::kSiluMul}) {
    call.epilogue = epi;
    call.y = epi == kernels::QGemmEpilogue::kLinear ? y.get() : h.get();
    std::vector<uint16_t> outs[2];
    for (int i = 0; i < 2; ++i) {
      ASSERT_TRUE(kernels::poison_f16(call.y, int64_t(epi == kernels::QGemmEpilogue::kLinear ? y.size() : h.size()),
                                      stream).is_ok());
      ASSERT_TRUE(w0.run(i == 0 ? r.model_plan : r.plan, call, stream).is_ok());
      QS_CUDA_CHECK(cudaStreamSynchronize(stream));
      outs[i] = epi == kernels::QGemmEpilogue::kLinear ? y.download() : h.download();
    }
    EXPECT_TRUE(outs[0] == outs[1]) << "the tuned plan's outputs differ from the model plan's";
  }
  // The prepared weights' table.
  kernels::QGemmPrepared prep = w0.prepared();
  ASSERT_TRUE(kernels::qgemm_set_tuned_plan(&prep, m, cands.back()).is_ok());
  EXPECT_TRUE(same(kernels::qgemm_plan(prep, m), cands.back()));
  EXPECT_TRUE(same(kernels::qgemm_plan(prep, m + 1), kernels::qgemm_plan(w0.prepared(), m + 1)));
  // Errors.
  std::vector<kernels::QGemmParams> bad = calls;
  bad[1].m = m + 1;
  EXPECT_THAT(kernels::qgemm_tune(bad, preps, stream, ws.get(), ws_bytes, {}, &r).message(), HasSubstr("differ"));
  const std::vector<const kernels::QGemmPrepared*> swapped{&w1.prepared(), &w0.prepared()};
  EXPECT_THAT(kernels::qgemm_tune(calls, swapped, stream, ws.get(), ws_bytes, {}, &r).message(),
              HasSubstr("prepared"));
  if (r.model_plan.workspace_bytes > 0)
    EXPECT_THAT(kernels::qgemm_tune(calls, preps, stream, ws.get(), r.model_plan.workspace_bytes - 1, {}, &r)
                    .message(),
                HasSubstr("workspace"));
  QS_CUDA_CHECK(cudaStreamDestroy(stream));
}

INSTANTIATE_TEST_SUITE_P(AllVariants, QGemmGpu,
                         ::testing::Values(WeightFormat::kW4A8PerChannel, WeightFormat::kW4A8G128,
                                           WeightFormat::kW8A8),
                         [](const auto& info) {
                           std::string s = weight_format_name(info.param);
                           std::replace(s.begin(), s.end(), '-', '_');  // gtest names: [A-Za-z0-9_]
                           return s;
                         });

// The kernels' packed g128 dequantization (host-callable) equals formats.h for every in-range combination: all
// s2, all zn in [-128, 0], four different nibbles a word (so a carry between bytes would show); the biased bytes
// (the sm90 kernel's unsigned wgmma operand) are w8 + 128.
TEST(QGemmDequant, G128PackedMultiplyAddMatchesFormatsExhaustively) {
  int64_t checked = 0;
  for (int s2 = 1; s2 <= 255; ++s2)
    for (int zn = -128; zn <= 0; ++zn)
      for (int q0 = 0; q0 < 16; ++q0) {
        const int q[4] = {q0, (q0 + 5) % 16, (q0 + 11) % 16, 15 - q0};
        bool in_range = true;
        uint32_t word = 0;
        for (int b = 0; b < 4; ++b) {
          in_range = in_range && q[b] * s2 <= 255 && q[b] * s2 + zn >= -128 && q[b] * s2 + zn <= 127;
          word |= uint32_t(q[b]) << (8 * b);
        }
        if (!in_range) continue;
        uint32_t s2u, zb4;
        kernels::qgemm_detail::unpack_s2zn(uint32_t(s2) | (uint32_t(uint8_t(int8_t(zn))) << 8), s2u, zb4);
        const uint32_t got = kernels::qgemm_detail::dequant_g128x4(word, s2u, zb4);
        const uint32_t biased = kernels::qgemm_detail::dequant_g128x4_biased(word, s2u, zb4);  // the sm90 kernel's
        for (int b = 0; b < 4; ++b) {
          const int8_t want = fmt4::dequant_w4_g128_to_int8(uint8_t(q[b]), uint8_t(s2), int8_t(zn));
          ASSERT_EQ(int8_t(got >> (8 * b)), want) << "q=" << q[b] << " s2=" << s2 << " zn=" << zn;
          ASSERT_EQ(int(uint8_t(biased >> (8 * b))), int(want) + 128) << "q=" << q[b] << " s2=" << s2 << " zn=" << zn;
        }
        ++checked;
      }
  EXPECT_GT(checked, 10000);
}

TEST(QGemmGpuErrors, BadShapesAndPointers) {
  QS_REQUIRE_GPU();
  auto pr = test::make_qgemm_problem(WeightFormat::kW8A8, 2, 24, 128, 3);
  EXPECT_THAT([&] { cuda::QGemmDeviceWeights::upload(pr.weights()); },
              ::testing::ThrowsMessage<Error>(HasSubstr("needs N % 16 == 0")));
  kernels::QGemmParams p;
  p.variant = WeightFormat::kW8A8;
  p.m = 4;
  p.n = 32;
  p.k = 200;
  EXPECT_THAT(kernels::qgemm_run(p, {}, nullptr).message(), HasSubstr("multiple of 128"));
  p.k = 256;
  EXPECT_THAT(kernels::qgemm_run(p, {}, nullptr).message(), HasSubstr("required pointer"));
  auto pc = test::make_qgemm_problem(WeightFormat::kW4A8PerChannel, 20, 64, 1024, 3);
  const auto w = cuda::QGemmDeviceWeights::upload(pc.weights());
  DeviceBuffer<int8_t> x(pc.xq);
  DeviceBuffer<uint16_t> sx(pc.sx), xs(pc.xsum), y(size_t(20 * 64));
  cuda::QGemmCall call;
  call.m = 20;
  call.x = x.get();
  call.sx = sx.get();
  call.xsum = xs.get();
  call.y = y.get();
  // Split through the global workspace (sm80 configs; sm90 global mode) without one.
  EXPECT_THAT(w.run(kernels::qgemm_plan_for(pc.variant, 20, 64, 1024, kernels::kQGemm_bn64_bm64, 4), call, nullptr)
                  .message(),
              HasSubstr("needs a workspace"));
  EXPECT_THAT(
      w.run(kernels::qgemm_plan_for(pc.variant, 20, 64, 1024, kernels::kQGemm_sm90_bn128_bm64, 4, true), call, nullptr)
          .message(),
      HasSubstr("needs a workspace"));
  call.xsum = nullptr;
  EXPECT_THAT(w.run(w.plan(20, 1), call, nullptr).message(), HasSubstr("needs xsum"));
  // g128 needs the code sums (its Hopper kernel removes 128 * qsum from the accumulators).
  {
    auto pg = test::make_qgemm_problem(WeightFormat::kW4A8G128, 20, 64, 1024, 5);
    const auto wg = cuda::QGemmDeviceWeights::upload(pg.weights());
    cuda::QGemmCall cg = call;
    cg.xsum = nullptr;
    EXPECT_THAT(wg.run(wg.plan(20, 1), cg, nullptr).message(), HasSubstr("needs s2zn and qsum"));
  }
  // The SiLU*up epilogue writes [m, n/2]: a residual [m, n] cannot be added.
  call.xsum = xs.get();
  call.residual = y.get();
  call.epilogue = kernels::QGemmEpilogue::kSiluMul;
  EXPECT_THAT(w.run(w.plan(20, 1), call, nullptr).message(), HasSubstr("takes no residual"));
  call.residual = nullptr;
  call.epilogue = kernels::QGemmEpilogue::kLinear;
  // A prepared object of other weights is refused, never silently used.
  kernels::QGemmParams p2 = w.params(call);
  const auto other = cuda::QGemmDeviceWeights::upload(pc.weights());
  EXPECT_THAT(kernels::qgemm_run(p2, kernels::qgemm_plan_for(pc.variant, 20, 64, 1024, kernels::kQGemm_sm90_bn128_bm32, 1),
                                 nullptr, &other.prepared())
                  .message(),
              HasSubstr("prepared weights do not describe"));
  // sm90 split-K is one cluster: at most 8 CTAs (K = 9 k tiles, so 9 splits leave none empty).
  auto p9 = test::make_qgemm_problem(WeightFormat::kW4A8PerChannel, 20, 64, 1152, 4);
  const auto w9 = cuda::QGemmDeviceWeights::upload(p9.weights());
  DeviceBuffer<int8_t> x9(p9.xq);
  call.x = x9.get();
  EXPECT_THAT(kernels::qgemm_run(w9.params(call), kernels::QGemmPlan{kernels::kQGemm_sm90_bn128_bm32, 9, 0}, nullptr)
                  .message(),
              HasSubstr("at most 8"));
}

// The prepared (upload-time) TMA descriptors and per-call encoding give the same bits.
TEST_P(QGemmGpu, PreparedEqualsPerCallDescriptors) {
  QS_REQUIRE_GPU();
  const auto pr = test::make_qgemm_problem(GetParam(), 77, 384, 1024, 9, true, true);
  const auto w = cuda::QGemmDeviceWeights::upload(pr.weights());
  ASSERT_TRUE(w.prepared().ready);
  DeviceBuffer<int8_t> x(pr.xq);
  DeviceBuffer<uint16_t> sx(pr.sx), xsum(pr.xsum), bias(pr.bias), residual(pr.residual);
  DeviceBuffer<int32_t> qsum(pr.qsum);
  DeviceBuffer<uint16_t> y1(size_t(77 * 384)), y2(size_t(77 * 384));
  cuda::QGemmCall call;
  call.m = 77;
  call.x = x.get();
  call.sx = sx.get();
  call.xsum = xsum.get();
  call.qsum = qsum.get();
  call.bias = bias.get();
  call.residual = residual.get();
  for (int config : runnable_configs()) {
    if (!kernels::qgemm_config_is_sm90(config)) continue;
    const auto plan = kernels::qgemm_plan_for(pr.variant, 77, 384, 1024, config, 2);
    call.y = y1.get();
    ASSERT_TRUE(kernels::qgemm_run(w.params(call), plan, nullptr, &w.prepared()).is_ok());
    call.y = y2.get();
    ASSERT_TRUE(kernels::qgemm_run(w.params(call), plan, nullptr, nullptr).is_ok());
    QS_CUDA_CHECK(cudaDeviceSynchronize());
    EXPECT_EQ(y1.download(), y2.download()) << kernels::qgemm_config_name(config);
  }
}

}  // namespace
}  // namespace qs
