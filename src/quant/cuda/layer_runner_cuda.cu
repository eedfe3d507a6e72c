// The GPU calibration runner (see layer_runner_cuda.h).
#include <cublas_v2.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <mutex>

#include "core/error.h"
#include "io/model_config.h"
#include "kernels/common/device_buffer.h"
#include "quant/cuda/layer_runner_cuda.h"
#include "quant/qoq/model_view.h"

namespace qs::quant::qoq {
namespace {

#define QS_CUBLAS(expr)                                                              \
  do {                                                                               \
    const cublasStatus_t _s = (expr);                                                \
    QS_CHECK(_s == CUBLAS_STATUS_SUCCESS) << #expr << ": cuBLAS status " << int(_s); \
  } while (0)

std::atomic<int64_t> g_peak{0};

unsigned nblocks(int64_t n, int t = 256) { return unsigned((n + t - 1) / t); }

// ---- kernels ----------------------------------------------------------------------------------------------

// y[r, :] = x[r, :] / sqrt(mean(x^2) + eps) * w; one block per row.
__global__ void rmsnorm_kernel(const float* x, const float* w, int64_t d, double eps, float* y) {
  const int64_t r = blockIdx.x;
  const float* xr = x + r * d;
  __shared__ double part[256];
  double s = 0.0;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) s += double(xr[j]) * double(xr[j]);
  part[threadIdx.x] = s;
  __syncthreads();
  for (int o = blockDim.x / 2; o > 0; o >>= 1) {
    if (int(threadIdx.x) < o) part[threadIdx.x] += part[threadIdx.x + o];
    __syncthreads();
  }
  const float inv = float(1.0 / sqrt(part[0] / double(d) + eps));
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) y[r * d + j] = xr[j] * inv * w[j];
}

__global__ void add_bias(float* y, const float* b, int64_t m, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < m * n) y[i] += b[i % n];
}

// Rotate-half RoPE in place on x [m, heads, d]; row r is at position r % len (every window starts at 0).
__global__ void rope_kernel(float* x, int64_t m, int64_t heads, int64_t d, int64_t len, const double* inv_freq) {
  const int64_t half = d / 2;
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= m * heads * half) return;
  const int64_t j = idx % half, h = (idx / half) % heads, r = idx / (half * heads);
  const double ang = double(r % len) * inv_freq[j];
  double s, c;
  sincos(ang, &s, &c);
  float* v = x + (r * heads + h) * d;
  const double a = v[j], b = v[j + half];
  v[j] = float(a * c - b * s);
  v[j + half] = float(b * c + a * s);
}

// Causal softmax in place on each row i of s [batch, len, len] (row-major [i][j]); keys j > i (or outside the
// sliding window) get 0. One block per row.
__global__ void causal_softmax(float* s, int64_t len, int64_t window) {
  const int64_t row = blockIdx.x;  // batch * len rows
  const int64_t i = row % len;
  float* p = s + row * len;
  const int64_t j0 = window > 0 && i - window + 1 > 0 ? i - window + 1 : 0;
  __shared__ float red[256];
  float mx = -INFINITY;
  for (int64_t j = j0 + threadIdx.x; j <= i; j += blockDim.x) mx = fmaxf(mx, p[j]);
  red[threadIdx.x] = mx;
  __syncthreads();
  for (int o = blockDim.x / 2; o > 0; o >>= 1) {
    if (int(threadIdx.x) < o) red[threadIdx.x] = fmaxf(red[threadIdx.x], red[threadIdx.x + o]);
    __syncthreads();
  }
  mx = red[0];
  __syncthreads();
  float sum = 0.0f;
  for (int64_t j = j0 + threadIdx.x; j <= i; j += blockDim.x) {
    const float e = expf(p[j] - mx);
    p[j] = e;
    sum += e;
  }
  red[threadIdx.x] = sum;
  __syncthreads();
  for (int o = blockDim.x / 2; o > 0; o >>= 1) {
    if (int(threadIdx.x) < o) red[threadIdx.x] += red[threadIdx.x + o];
    __syncthreads();
  }
  const float inv = 1.0f / red[0];
  for (int64_t j = threadIdx.x; j < len; j += blockDim.x) p[j] = (j >= j0 && j <= i) ? p[j] * inv : 0.0f;
}

__global__ void silu_mul_kernel(float* g, const float* u, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) {
    const float x = g[i];
    g[i] = x / (1.0f + expf(-x)) * u[i];
  }
}

__global__ void add_kernel(float* a, const float* b, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) a[i] += b[i];
}

// mx[j] = max(mx[j], max_r |x[r, j]|) over m rows of k columns.
__global__ void col_absmax(const float* x, int64_t m, int64_t k, float* mx) {
  const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= k) return;
  float v = mx[j];
  for (int64_t r = 0; r < m; ++r) v = fmaxf(v, fabsf(x[r * k + j]));
  mx[j] = v;
}

// y [cnt, k] (double) = rows idx[0..cnt) of x [*, k].
__global__ void gather_double(const float* x, const int32_t* idx, int64_t cnt, int64_t k, double* y) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < cnt * k) y[i] = double(x[int64_t(idx[i / k]) * k + i % k]);
}

// Full symmetric H = f * (column-major upper sum) in row-major (symmetric, so either order).
__global__ void finish_hessian(const double* sum, int64_t k, double f, double* h) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= k * k) return;
  const int64_t col = idx / k, row = idx % k;  // column-major (row, col) of sum
  h[idx] = f * (row <= col ? sum[row + col * k] : sum[col + row * k]);
}

cublasHandle_t cublas() {
  static cublasHandle_t h = nullptr;
  static std::once_flag once;
  std::call_once(once, [] { QS_CUBLAS(cublasCreate(&h)); });
  return h;
}

void check_launch() { QS_CUDA_CHECK(cudaGetLastError()); }

// y [m, n] = x [m, k] W^T (+ b); W row-major [n, k].
void linear(const float* x, const float* w, const float* b, int64_t m, int64_t k, int64_t n, float* y) {
  const float one = 1.0f, zero = 0.0f;
  QS_CUBLAS(cublasSgemm(cublas(), CUBLAS_OP_T, CUBLAS_OP_N, int(n), int(m), int(k), &one, w, int(k), x, int(k), &zero,
                        y, int(n)));
  if (b) {
    add_bias<<<nblocks(m * n), 256>>>(y, b, m, n);
    check_launch();
  }
}

// ---- the runner ----------------------------------------------------------------------------------------------

class CudaLayerRunner : public CalibrationRunner {
 public:
  CudaLayerRunner(model::Model& model, const CalibrationSet& set) : model_(model) {
    QS_CHECK(!set.windows.empty()) << "calibration: no windows";
    const auto& c = model.config();
    samples_ = int64_t(set.windows.size());
    len_ = int64_t(set.windows[0].size());
    const int64_t h = c.hidden_size;
    // ~16k rows per chunk (whole windows): bounded activation memory whatever the calibration size.
    chunk_ = std::max<int64_t>(1, std::min<int64_t>(samples_, 16384 / len_));
    hidden_.resize(size_t(samples_ * len_ * h));
    for (int64_t s = 0; s < samples_; ++s) {
      QS_CHECK(int64_t(set.windows[size_t(s)].size()) == len_) << "calibration: windows of different lengths";
      model.embed(set.windows[size_t(s)].data(), len_, hidden_.data() + s * len_ * h);
    }
    d_hidden_ = DeviceBuffer<float>(hidden_);
    host_valid_ = true;
    const std::vector<double> f = io::rope_inv_freq(c);
    d_inv_freq_ = DeviceBuffer<double>(f);
    note_cuda_memory();
  }

  const std::vector<float>& hidden_host() override {
    if (!host_valid_) {
      hidden_ = d_hidden_.download();
      host_valid_ = true;
    }
    return hidden_;
  }
  void set_hidden(const std::vector<float>& hidden) override {
    QS_CHECK(hidden.size() == d_hidden_.size()) << "calibration: " << hidden.size() << " hidden values given, expected "
                                                << d_hidden_.size();
    d_hidden_.upload(hidden);
    hidden_ = hidden;
    host_valid_ = true;
  }

  LayerCapture run(int layer, const CaptureOptions& opt, bool advance) override;

 private:
  model::Model& model_;
  int64_t samples_ = 0, len_ = 0, chunk_ = 1;
  std::vector<float> hidden_;  // host copy (valid when host_valid_)
  bool host_valid_ = false;
  DeviceBuffer<float> d_hidden_;
  DeviceBuffer<double> d_inv_freq_;
};

DeviceBuffer<float> upload(const Tensor& t) {
  DeviceBuffer<float> d(size_t(t.numel()));
  QS_CUDA_CHECK(cudaMemcpy(d.get(), t.data<float>(), size_t(t.numel()) * 4, cudaMemcpyHostToDevice));
  return d;
}

LayerCapture CudaLayerRunner::run(int layer, const CaptureOptions& opt, bool advance) {
  const auto& c = model_.config();
  const int64_t H = c.hidden_size, Q = c.q_size(), KV = c.kv_size(), I = c.intermediate_size, D = c.head_dim;
  const int64_t nh = c.num_heads, nkv = c.num_kv_heads, ratio = nh / nkv, L = len_, T = samples_ * len_;
  const int64_t stride = std::max(1, opt.hessian_stride);
  QS_CHECK(layer >= 0 && layer < c.num_layers) << "calibration: layer " << layer << " out of range";
  host_valid_ = host_valid_ && !advance;

  // The layer's weights as they are now (the pipeline swaps in dequantized ones for the propagation pass).
  const auto& dl = model_.weights().layers[size_t(layer)];
  const std::string p = "model.layers." + std::to_string(layer) + ".";
  DeviceBuffer<float> w[model::kNumLayerLinears], bias[3];
  for (int j = 0; j < model::kNumLayerLinears; ++j) {
    const auto& lin = fp_linear(model_, p + model::kLayerLinearNames[j]);
    w[j] = upload(lin.weight());
    if (j < 3 && lin.has_bias()) bias[j] = upload(lin.bias());
  }
  const DeviceBuffer<float> in_norm = upload(dl.input_norm), post_norm = upload(dl.post_attn_norm);

  LayerCapture cap;
  const int64_t dims[kNumLinearInputs] = {H, Q, H, I};
  DeviceBuffer<float> d_absmax[kNumLinearInputs], d_keymax;
  DeviceBuffer<double> d_hsum[kNumLinearInputs];
  int64_t h_rows[kNumLinearInputs] = {0, 0, 0, 0};
  for (int i = 0; i < kNumLinearInputs; ++i) {
    if (opt.absmax) {
      d_absmax[i] = DeviceBuffer<float>(size_t(dims[i]));
      d_absmax[i].fill_bytes(0);
    }
    if (opt.hessians) {
      d_hsum[i] = DeviceBuffer<double>(size_t(dims[i] * dims[i]));
      d_hsum[i].fill_bytes(0);
    }
  }
  if (opt.keys) {
    d_keymax = DeviceBuffer<float>(size_t(KV));
    d_keymax.fill_bytes(0);
  }
  std::vector<int64_t> keep;
  if (opt.keep_rows > 0) {
    const int64_t n = std::min(opt.keep_rows, T);
    for (int64_t i = 0; i < n; ++i) keep.push_back(i * T / n);
    for (int i = 0; i < kNumLinearInputs; ++i) cap.rows[i] = Tensor(DType::F32, {n, dims[i]});
  }
  std::vector<int64_t> attn_slot(size_t(samples_), -1);
  AttentionSample& as = cap.attn;
  if (opt.attn_windows > 0 && opt.attn_queries > 0) {
    as.windows = std::min<int64_t>(opt.attn_windows, samples_);
    as.len = L;
    for (int64_t i = 0; i < as.windows; ++i) attn_slot[size_t(i * samples_ / as.windows)] = i;
    const int64_t nq = std::min<int64_t>(opt.attn_queries, L);
    for (int64_t i = 0; i < nq; ++i) as.q_pos.push_back(((2 * i + 1) * L) / (2 * nq));
    as.q.assign(size_t(as.windows * nq * Q), 0.0f);
    as.k.assign(size_t(as.windows * L * KV), 0.0f);
    as.v.assign(as.k.size(), 0.0f);
  }

  const int64_t cm = chunk_ * L;  // rows per chunk
  DeviceBuffer<float> xn(size_t(cm * H)), q(size_t(cm * Q)), k(size_t(cm * KV)), v(size_t(cm * KV)),
      attn(size_t(cm * Q)), tmp(size_t(cm * H)), gate(size_t(cm * I)), up(size_t(cm * I)),
      scores(size_t(nkv * L * L)), scratch;
  if (!advance) scratch = DeviceBuffer<float>(size_t(cm * H));
  DeviceBuffer<double> xd;
  DeviceBuffer<int32_t> d_idx;
  if (opt.hessians) {
    xd = DeviceBuffer<double>(size_t(cm * std::max(H, std::max(Q, I))));
    d_idx = DeviceBuffer<int32_t>(size_t(cm));
  }
  note_cuda_memory();

  // Rows the CPU runner would give its Hessians: every stride-th row of each forward call of windows_per_call
  // windows; here the same rule on the global row index (calls of 4 windows, as LayerRunner's default).
  const int64_t call_rows = 4 * L;
  std::vector<int32_t> idx;
  auto observe = [&](int which, const float* x, int64_t row0, int64_t m) {
    const int64_t kk = dims[which];
    if (opt.absmax) {
      col_absmax<<<nblocks(kk), 256>>>(x, m, kk, d_absmax[which].get());
      check_launch();
    }
    if (opt.hessians) {
      idx.clear();
      for (int64_t r = 0; r < m; ++r)
        if (((row0 + r) % call_rows) % stride == 0) idx.push_back(int32_t(r));
      const int64_t cnt = int64_t(idx.size());
      if (cnt > 0) {
        QS_CUDA_CHECK(cudaMemcpy(d_idx.get(), idx.data(), size_t(cnt) * 4, cudaMemcpyHostToDevice));
        gather_double<<<nblocks(cnt * kk), 256>>>(x, d_idx.get(), cnt, kk, xd.get());
        check_launch();
        const double one = 1.0;
        // Column-major: sum (kk x kk, upper) += A A^T, A = xd^T (kk x cnt, ld kk): sum_t x_t x_t^T.
        QS_CUBLAS(cublasDsyrk(cublas(), CUBLAS_FILL_MODE_UPPER, CUBLAS_OP_N, int(kk), int(cnt), &one, xd.get(),
                              int(kk), &one, d_hsum[which].get(), int(kk)));
        h_rows[which] += cnt;
      }
    }
    for (size_t i = 0; i < keep.size(); ++i)
      if (keep[i] >= row0 && keep[i] < row0 + m)
        QS_CUDA_CHECK(cudaMemcpy(cap.rows[which].data<float>() + int64_t(i) * kk, x + (keep[i] - row0) * kk,
                                 size_t(kk) * 4, cudaMemcpyDeviceToHost));
  };

  const double scale = 1.0 / std::sqrt(double(D));
  for (int64_t s0 = 0; s0 < samples_; s0 += chunk_) {
    QS_CHECK(!(opt.cancelled && opt.cancelled())) << "interrupted";
    const int64_t nw = std::min<int64_t>(chunk_, samples_ - s0), m = nw * L, row0 = s0 * L;
    float* hid = d_hidden_.get() + row0 * H;
    if (!advance) {
      QS_CUDA_CHECK(cudaMemcpy(scratch.get(), hid, size_t(m * H) * 4, cudaMemcpyDeviceToDevice));
      hid = scratch.get();
    }
    // Attention block.
    rmsnorm_kernel<<<unsigned(m), 256>>>(hid, in_norm.get(), H, c.rms_norm_eps, xn.get());
    check_launch();
    observe(int(LinearInput::kQkv), xn.get(), row0, m);
    linear(xn.get(), w[0].get(), bias[0].get(), m, H, Q, q.get());
    linear(xn.get(), w[1].get(), bias[1].get(), m, H, KV, k.get());
    linear(xn.get(), w[2].get(), bias[2].get(), m, H, KV, v.get());
    rope_kernel<<<nblocks(m * nh * (D / 2)), 256>>>(q.get(), m, nh, D, L, d_inv_freq_.get());
    rope_kernel<<<nblocks(m * nkv * (D / 2)), 256>>>(k.get(), m, nkv, D, L, d_inv_freq_.get());
    check_launch();
    if (opt.keys) {
      col_absmax<<<nblocks(KV), 256>>>(k.get(), m, KV, d_keymax.get());
      check_launch();
    }
    for (int64_t wi = 0; wi < nw; ++wi) {
      const int64_t slot = attn_slot[size_t(s0 + wi)];
      if (slot < 0) continue;
      const int64_t nq = as.nq();
      for (int64_t i = 0; i < nq; ++i)
        QS_CUDA_CHECK(cudaMemcpy(as.q.data() + (slot * nq + i) * Q, q.get() + (wi * L + as.q_pos[size_t(i)]) * Q,
                                 size_t(Q) * 4, cudaMemcpyDeviceToHost));
      QS_CUDA_CHECK(cudaMemcpy(as.k.data() + slot * L * KV, k.get() + wi * L * KV, size_t(L * KV) * 4,
                               cudaMemcpyDeviceToHost));
      QS_CUDA_CHECK(cudaMemcpy(as.v.data() + slot * L * KV, v.get() + wi * L * KV, size_t(L * KV) * 4,
                               cudaMemcpyDeviceToHost));
    }
    for (int64_t wi = 0; wi < nw; ++wi) {
      const float* qw = q.get() + wi * L * Q;
      const float* kw = k.get() + wi * L * KV;
      const float* vw = v.get() + wi * L * KV;
      float* ow = attn.get() + wi * L * Q;
      for (int64_t r = 0; r < ratio; ++r) {
        // Query head h = g * ratio + r reads KV head g; batched over g.
        const float alpha = float(scale), zero = 0.0f, one = 1.0f;
        // Column-major S_g (L_j x L_i) = K_g^T Q_h: row-major scores [i][j].
        QS_CUBLAS(cublasSgemmStridedBatched(cublas(), CUBLAS_OP_T, CUBLAS_OP_N, int(L), int(L), int(D), &alpha, kw,
                                            int(KV), D, qw + r * D, int(Q), ratio * D, &zero, scores.get(), int(L),
                                            L * L, int(nkv)));
        causal_softmax<<<unsigned(nkv * L), 256>>>(scores.get(), L, c.sliding_window);
        check_launch();
        // Column-major O_h (D x L_i) = V_g (D x L_j) P (L_j x L_i).
        QS_CUBLAS(cublasSgemmStridedBatched(cublas(), CUBLAS_OP_N, CUBLAS_OP_N, int(D), int(L), int(L), &one, vw,
                                            int(KV), D, scores.get(), int(L), L * L, &zero, ow + r * D, int(Q),
                                            ratio * D, int(nkv)));
      }
    }
    observe(int(LinearInput::kO), attn.get(), row0, m);
    linear(attn.get(), w[3].get(), nullptr, m, Q, H, tmp.get());
    add_kernel<<<nblocks(m * H), 256>>>(hid, tmp.get(), m * H);
    check_launch();
    // MLP block.
    rmsnorm_kernel<<<unsigned(m), 256>>>(hid, post_norm.get(), H, c.rms_norm_eps, xn.get());
    check_launch();
    observe(int(LinearInput::kGateUp), xn.get(), row0, m);
    linear(xn.get(), w[4].get(), nullptr, m, H, I, gate.get());
    linear(xn.get(), w[5].get(), nullptr, m, H, I, up.get());
    silu_mul_kernel<<<nblocks(m * I), 256>>>(gate.get(), up.get(), m * I);
    check_launch();
    observe(int(LinearInput::kDown), gate.get(), row0, m);
    linear(gate.get(), w[6].get(), nullptr, m, I, H, tmp.get());
    add_kernel<<<nblocks(m * H), 256>>>(hid, tmp.get(), m * H);
    check_launch();
  }
  QS_CUDA_CHECK(cudaDeviceSynchronize());
  note_cuda_memory();

  for (int i = 0; i < kNumLinearInputs; ++i) {
    if (opt.absmax) cap.absmax[i] = d_absmax[i].download();
    if (opt.hessians) {
      QS_CHECK(h_rows[i] > 0) << "HessianAccumulator: no calibration inputs were added";
      const int64_t kk = dims[i];
      DeviceBuffer<double> full(size_t(kk * kk));
      finish_hessian<<<nblocks(kk * kk), 256>>>(d_hsum[i].get(), kk, 2.0 / double(h_rows[i]), full.get());
      check_launch();
      d_hsum[i] = DeviceBuffer<double>();
      cap.hessian_full[i] = full.download();
    }
  }
  if (opt.keys) cap.key_max = d_keymax.download();
  return cap;
}

}  // namespace

bool cuda_calibration_available(std::string* why) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n == 0) {
    if (why) *why = e != cudaSuccess ? std::string("no usable CUDA device: ") + cudaGetErrorString(e) : "no CUDA device";
    cudaGetLastError();
    return false;
  }
  return true;
}

std::unique_ptr<CalibrationRunner> make_cuda_layer_runner(model::Model& model, const CalibrationSet& set) {
  std::string why;
  QS_CHECK(cuda_calibration_available(&why)) << "calibration on the GPU: " << why;
  return std::make_unique<CudaLayerRunner>(model, set);
}

int64_t cuda_peak_memory_bytes() { return g_peak.load(); }

void note_cuda_memory() {
  size_t free_b = 0, total_b = 0;
  if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) {
    cudaGetLastError();
    return;
  }
  const int64_t used = int64_t(total_b - free_b);
  int64_t cur = g_peak.load();
  while (used > cur && !g_peak.compare_exchange_weak(cur, used)) {
  }
}

}  // namespace qs::quant::qoq
