// GPTQ, Hessian accumulation and the per-channel clipping search (see gptq.h).
#include "quant/gptq.h"

#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/thread_pool.h"
#include "quant/cuda/gptq_cuda.h"

namespace qs::quant {

namespace {

// y[0..n) += a * x[0..n) in 16-byte vectors (GCC/Clang vector extension: -O2 leaves loops with an unknown
// trip count scalar). Per element exactly one multiply and one add, as in the scalar loop, so results are
// the same as without vectors.
template <typename T>
void axpy(T* y, const T* x, T a, int64_t n) {
  typedef T vec __attribute__((vector_size(16)));
  constexpr int64_t kLanes = 16 / sizeof(T);
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    vec vx, vy;
    std::memcpy(&vx, x + j, 16);
    std::memcpy(&vy, y + j, 16);
    vy += a * vx;
    std::memcpy(y + j, &vy, 16);
  }
  for (; j < n; ++j) y[j] += a * x[j];
}

// sum_j x[j] * y[j] in double with 16-byte vector partial sums (a fixed summation order: deterministic).
double dot(const double* x, const double* y, int64_t n) {
  typedef double vec __attribute__((vector_size(16)));
  vec a0 = {0.0, 0.0}, a1 = {0.0, 0.0};
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) {
    vec x0, x1, y0, y1;
    std::memcpy(&x0, x + j, 16);
    std::memcpy(&x1, x + j + 2, 16);
    std::memcpy(&y0, y + j, 16);
    std::memcpy(&y1, y + j + 2, 16);
    a0 += x0 * y0;
    a1 += x1 * y1;
  }
  const vec a = a0 + a1;
  double s = a[0] + a[1];
  for (; j < n; ++j) s += x[j] * y[j];
  return s;
}

}  // namespace

HessianAccumulator::HessianAccumulator(int64_t k) : k_(k) {
  QS_CHECK(k > 0) << "HessianAccumulator: K = " << k << " must be positive";
  sum_.assign(size_t(k * k), 0.0);
}

void HessianAccumulator::add(const float* x, int64_t rows) {
  QS_CHECK(rows >= 0) << "HessianAccumulator: negative row count";
  // Tiled outer products: for a chunk of up to kRowChunk tokens, a kTi x kTj FP32 tile of sum_t x_ti x_tj
  // (vectorizable axpys over j) is accumulated in token order and then added to the double sum. Each row i of
  // H belongs to one thread (tiles are split by i), so results do not depend on the thread count; FP32 partial
  // sums of <= 256 products keep the relative error below ~2e-5 of sum |x_ti x_tj|.
  constexpr int64_t kRowChunk = 256, kTi = 16, kTj = 512;
  const int64_t tiles_i = (k_ + kTi - 1) / kTi;
  for (int64_t r0 = 0; r0 < rows; r0 += kRowChunk) {
    const int64_t r1 = std::min(rows, r0 + kRowChunk);
    parallel_for(tiles_i, [&](int64_t b, int64_t e) {
      std::vector<float> tile(static_cast<size_t>(kTi * kTj));
      for (int64_t ti = b; ti < e; ++ti) {
        const int64_t i0 = ti * kTi, i1 = std::min(k_, i0 + kTi);
        for (int64_t j0 = i0; j0 < k_; j0 += kTj) {
          const int64_t j1 = std::min(k_, j0 + kTj), nj = j1 - j0;
          std::fill(tile.begin(), tile.end(), 0.0f);
          for (int64_t r = r0; r < r1; ++r) {
            const float* xr = x + r * k_;
            for (int64_t i = i0; i < i1; ++i) {
              const float xi = xr[i];
              if (xi == 0.0f) continue;
              axpy(tile.data() + (i - i0) * kTj, xr + j0, xi, nj);
            }
          }
          for (int64_t i = i0; i < i1; ++i) {
            double* acc = sum_.data() + i * k_;
            const float* t = tile.data() + (i - i0) * kTj;
            for (int64_t j = std::max(j0, i); j < j1; ++j) acc[j] += double(t[j - j0]);
          }
        }
      }
    });
  }
  n_ += rows;
}

std::vector<double> HessianAccumulator::hessian() const {
  QS_CHECK(n_ > 0) << "HessianAccumulator: no calibration inputs were added";
  std::vector<double> h(sum_.size());
  const double f = 2.0 / double(n_);
  for (int64_t i = 0; i < k_; ++i)
    for (int64_t j = i; j < k_; ++j) h[size_t(i * k_ + j)] = h[size_t(j * k_ + i)] = f * sum_[size_t(i * k_ + j)];
  return h;
}

namespace {

// In-place lower Cholesky factor of the symmetric K x K matrix a (upper part left as garbage-free zeros).
void cholesky_lower(std::vector<double>& a, int64_t k, const char* what) {
  for (int64_t j = 0; j < k; ++j) {
    double* rj = a.data() + j * k;
    const double d = rj[j] - dot(rj, rj, j);
    QS_CHECK(d > 0.0 && std::isfinite(d)) << what << ": matrix is not positive definite (pivot " << j << " = " << d
                                          << ")";
    const double l = std::sqrt(d);
    rj[j] = l;
    parallel_for(
        k - j - 1,
        [&](int64_t b, int64_t e) {
          for (int64_t i = j + 1 + b; i < j + 1 + e; ++i) {
            double* ri = a.data() + i * k;
            ri[j] = (ri[j] - dot(ri, rj, j)) / l;
          }
        },
        64);
  }
  for (int64_t i = 0; i < k; ++i)
    for (int64_t j = i + 1; j < k; ++j) a[size_t(i * k + j)] = 0.0;
}

void check_hessian(const std::vector<double>& h, int64_t k, const char* what) {
  QS_CHECK(int64_t(h.size()) == k * k) << what << ": Hessian has " << h.size() << " entries, expected " << k
                                       << " x " << k;
}

}  // namespace

std::vector<double> gptq_inverse_hessian_factor(std::vector<double> h, int64_t k, double damp) {
  check_hessian(h, k, "gptq");
  double mean = 0.0;
  for (int64_t i = 0; i < k; ++i) {
    if (h[size_t(i * k + i)] == 0.0) h[size_t(i * k + i)] = 1.0;  // dead input
    mean += h[size_t(i * k + i)];
  }
  mean /= double(k);
  for (int64_t i = 0; i < k; ++i) h[size_t(i * k + i)] += damp * mean;
  // Cholesky of the order-reversed matrix J H J = L L^T gives H = Ut Ut^T with Ut = J L J upper; then
  // H^-1 = (Ut^-1)^T Ut^-1, so U = Ut^-1 = J L^-1 J is the upper factor we want.
  std::vector<double> r(size_t(k * k));
  for (int64_t i = 0; i < k; ++i)
    for (int64_t j = 0; j < k; ++j) r[size_t(i * k + j)] = h[size_t((k - 1 - i) * k + (k - 1 - j))];
  cholesky_lower(r, k, "gptq (damped Hessian)");
  // Column j of L^-1 by forward substitution of L x = e_j, stored contiguously (row j of linv_t).
  std::vector<double> linv_t(size_t(k * k), 0.0);
  parallel_for(k, [&](int64_t b, int64_t e) {
    for (int64_t j = b; j < e; ++j) {
      double* x = linv_t.data() + j * k;
      x[j] = 1.0 / r[size_t(j * k + j)];
      for (int64_t i = j + 1; i < k; ++i) x[i] = -dot(r.data() + i * k + j, x + j, i - j) / r[size_t(i * k + i)];
    }
  });
  std::vector<double> u(size_t(k * k));
  for (int64_t i = 0; i < k; ++i)
    for (int64_t j = 0; j < k; ++j) u[size_t(i * k + j)] = linv_t[size_t((k - 1 - j) * k + (k - 1 - i))];
  return u;
}

Tensor gptq(const Tensor& w, const std::vector<double>& h, GptqRounding& rounding, const GptqOptions& opt) {
  QS_CHECK(w.dtype() == DType::F32 && w.ndim() == 2) << "gptq: expected an F32 [N, K] weight, got " << w.desc();
  const int64_t n = w.dim(0), k = w.dim(1), bs = opt.block_size, gs = rounding.group_size();
  check_hessian(h, k, "gptq");
  QS_CHECK(bs > 0) << "gptq: block size " << bs << " must be positive";
  QS_CHECK(gs == 0 || (gs > 0 && bs % gs == 0 && k % gs == 0))
      << "gptq: group size " << gs << " must divide the block size " << bs << " and K = " << k;
  if (opt.cuda) return gptq_cuda(w, h, rounding, opt);
  const std::vector<double> u = gptq_inverse_hessian_factor(h, k, opt.damp);
  std::vector<char> dead(static_cast<size_t>(k));
  for (int64_t i = 0; i < k; ++i) dead[size_t(i)] = h[size_t(i * k + i)] == 0.0;

  Tensor work = w.clone();
  float* wp = work.data<float>();
  const float* orig = w.data<float>();
  Tensor q(DType::F32, {n, k});
  float* qp = q.data<float>();
  for (int64_t r = 0; r < n; ++r)
    for (int64_t i = 0; i < k; ++i)
      if (dead[size_t(i)]) wp[r * k + i] = 0.0f;

  std::vector<float> err(static_cast<size_t>(n * bs));
  for (int64_t i1 = 0; i1 < k; i1 += bs) {
    const int64_t i2 = std::min(i1 + bs, k);
    gptq_column_block(rounding, n, k, i1, i2, orig, wp + i1, k, u.data() + i1 * k + i1, k, err.data(), bs, qp);
    if (i2 == k) break;
    // Lazy batch update of the trailing columns: W[:, i2:] -= Err [N, i2-i1] x U[i1:i2, i2:].
    parallel_for(n, [&](int64_t b, int64_t e) {
      std::vector<double> acc(static_cast<size_t>(k - i2));
      for (int64_t r = b; r < e; ++r) {
        std::fill(acc.begin(), acc.end(), 0.0);
        const float* er = err.data() + r * bs;
        for (int64_t t = 0; t < i2 - i1; ++t) {
          const double ev = er[t];
          if (ev == 0.0) continue;
          axpy(acc.data(), u.data() + (i1 + t) * k + i2, ev, k - i2);
        }
        float* row = wp + r * k + i2;
        for (int64_t j = 0; j < k - i2; ++j) row[j] -= float(acc[size_t(j)]);
      }
    });
  }
  return q;
}

namespace {

class PerChannelRounding final : public GptqRounding {
 public:
  PerChannelRounding(int64_t n, int64_t k, const std::vector<float>& clip)
      : k_(k), clip_(clip), params_(size_t(n)), codes_(size_t(n * k)) {}
  int64_t group_size() const override { return 0; }
  void set_group(int64_t row, int64_t, const float* w, int64_t len) override {
    params_[size_t(row)] = w4_channel_params(w, len, clip_.empty() ? 1.0f : clip_[size_t(row)]);
  }
  float round(int64_t row, int64_t col, float w) override {
    const W4ChannelParams& p = params_[size_t(row)];
    const uint8_t c = w4_channel_quantize(w, p);
    codes_[size_t(row * k_ + col)] = c;
    return w4_channel_dequant(c, p);
  }
  int64_t k_;
  const std::vector<float>& clip_;
  std::vector<W4ChannelParams> params_;
  std::vector<uint8_t> codes_;
};

class G128Rounding final : public GptqRounding {
 public:
  G128Rounding(const Tensor& w, int p) : k_(w.dim(1)), p_(p), s1_(size_t(w.dim(0))), codes_(size_t(w.numel())) {
    const int64_t n = w.dim(0), ng = k_ / fmt4::kGroupSize;
    groups_.resize(size_t(n * ng));
    parallel_for(n, [&](int64_t b, int64_t e) {  // rows are independent
      for (int64_t r = b; r < e; ++r) s1_[size_t(r)] = g128_level1_scale(w.data<float>() + r * k_, k_, p);
    });
  }
  int64_t group_size() const override { return fmt4::kGroupSize; }
  void set_group(int64_t row, int64_t col0, const float* w, int64_t len) override {
    const float s1 = fp16_to_float(s1_[size_t(row)]);
    int mn = 0, mx = 0;
    for (int64_t j = 0; j < len; ++j) {
      const int v = g128_level1_quantize(w[j], s1, p_);
      mn = std::min(mn, v);
      mx = std::max(mx, v);
    }
    groups_[size_t(row * (k_ / fmt4::kGroupSize) + col0 / fmt4::kGroupSize)] = g128_group_params(mn, mx);
  }
  float round(int64_t row, int64_t col, float w) override {
    const float s1 = fp16_to_float(s1_[size_t(row)]);
    const G128GroupParams& g = groups_[size_t(row * (k_ / fmt4::kGroupSize) + col / fmt4::kGroupSize)];
    const uint8_t c = g128_quantize(g128_level1_quantize(w, s1, p_), g);
    codes_[size_t(row * k_ + col)] = c;
    return float(g128_dequant_int8(c, g)) * s1;
  }
  int64_t k_;
  int p_;
  std::vector<uint16_t> s1_;
  std::vector<G128GroupParams> groups_;
  std::vector<uint8_t> codes_;
};

// gptq_column_block for one rounding type: with a final class the per-element calls are direct (inlined).
template <class R>
void column_block(R& rounding, int64_t n, int64_t k, int64_t i1, int64_t i2, const float* orig, float* cols,
                  int64_t col_stride, const double* ud, int64_t u_stride, float* err, int64_t err_stride, float* q) {
  const int64_t gs = rounding.group_size();
  parallel_for(n, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      float* row = cols + r * col_stride;  // row[i - i1]: column i
      float* er = err + r * err_stride;
      if (i1 == 0 && gs == 0) rounding.set_group(r, 0, orig + r * k, k);
      for (int64_t i = i1; i < i2; ++i) {
        if (gs > 0 && i % gs == 0) rounding.set_group(r, i, row + (i - i1), gs);
        const float x = row[i - i1];
        const float dq = rounding.round(r, i, x);
        q[r * k + i] = dq;
        const double* ui = ud + (i - i1) * u_stride;  // ui[j - i1] = U[i, j]
        const float ev = float(double(x - dq) / ui[i - i1]);
        er[i - i1] = ev;
        for (int64_t j = i + 1; j < i2; ++j) row[j - i1] -= float(double(ev) * ui[j - i1]);
      }
    }
  });
}

}  // namespace

void gptq_column_block(GptqRounding& rounding, int64_t n, int64_t k, int64_t i1, int64_t i2, const float* orig,
                       float* cols, int64_t col_stride, const double* ud, int64_t u_stride, float* err,
                       int64_t err_stride, float* q) {
  if (auto* g = dynamic_cast<G128Rounding*>(&rounding))
    column_block(*g, n, k, i1, i2, orig, cols, col_stride, ud, u_stride, err, err_stride, q);
  else if (auto* c = dynamic_cast<PerChannelRounding*>(&rounding))
    column_block(*c, n, k, i1, i2, orig, cols, col_stride, ud, u_stride, err, err_stride, q);
  else
    column_block(rounding, n, k, i1, i2, orig, cols, col_stride, ud, u_stride, err, err_stride, q);
}

W4PerChannelWeight gptq_w4_per_channel(const Tensor& w, const std::vector<double>& h,
                                       const std::vector<float>& clip_ratios, const GptqOptions& opt) {
  check_weight(w, "gptq_w4_per_channel");
  const int64_t n = w.dim(0), k = w.dim(1);
  QS_CHECK(clip_ratios.empty() || int64_t(clip_ratios.size()) == n)
      << "gptq_w4_per_channel: " << clip_ratios.size() << " clip ratios for " << n << " channels";
  PerChannelRounding rounding(n, k, clip_ratios);
  W4PerChannelWeight r;
  r.dequant = gptq(w, h, rounding, opt);
  r.qweight = pack_u4(rounding.codes_.data(), n, k);
  r.scale = Tensor(DType::F16, {n});
  r.szero = Tensor(DType::F16, {n});
  for (int64_t i = 0; i < n; ++i) {
    r.scale.data<uint16_t>()[i] = rounding.params_[size_t(i)].scale;
    r.szero.data<uint16_t>()[i] = rounding.params_[size_t(i)].szero;
  }
  return r;
}

W4G128Weight gptq_w4_g128(const Tensor& w, const std::vector<double>& h, int protective_range,
                          const GptqOptions& opt) {
  check_weight(w, "gptq_w4_g128");
  QS_CHECK(protective_range >= 1 && protective_range <= 127)
      << "gptq_w4_g128: protective range " << protective_range << " outside [1, 127]";
  const int64_t n = w.dim(0), k = w.dim(1), ng = k / fmt4::kGroupSize;
  QS_CHECK(k % fmt4::kGroupSize == 0) << "gptq_w4_g128: K = " << k << " is not a multiple of the group size "
                                      << fmt4::kGroupSize;
  G128Rounding rounding(w, protective_range);
  W4G128Weight r;
  r.protective_range = protective_range;
  r.dequant = gptq(w, h, rounding, opt);
  r.qweight = pack_u4(rounding.codes_.data(), n, k);
  r.s1 = Tensor(DType::F16, {n});
  r.s2 = Tensor(DType::U8, {n, ng});
  r.zn = Tensor(DType::I8, {n, ng});
  std::memcpy(r.s1.raw_mut(), rounding.s1_.data(), size_t(n) * 2);
  for (int64_t i = 0; i < n * ng; ++i) {
    r.s2.data<uint8_t>()[i] = rounding.groups_[size_t(i)].s2;
    r.zn.data<int8_t>()[i] = rounding.groups_[size_t(i)].zn;
  }
  return r;
}

std::vector<float> search_clip_ratios(const Tensor& w, const float* f, int64_t rows, int steps, float min_ratio) {
  check_weight(w, "search_clip_ratios");
  QS_CHECK(steps >= 1 && min_ratio > 0.0f && min_ratio <= 1.0f)
      << "search_clip_ratios: need steps >= 1 and a minimum ratio in (0, 1], got " << steps << ", " << min_ratio;
  QS_CHECK(rows > 0 && f != nullptr) << "search_clip_ratios: no calibration rows";
  const int64_t n = w.dim(0), k = w.dim(1);
  std::vector<float> ratios(size_t(steps + 1));
  for (int s = 0; s <= steps; ++s) ratios[size_t(s)] = float(1.0 - (1.0 - double(min_ratio)) * s / steps);
  std::vector<float> best(static_cast<size_t>(n), 1.0f);
  const int64_t ns = int64_t(ratios.size());
  parallel_for(n, [&](int64_t b, int64_t e) {
    // dt[j][s]: the RTN residual of element j under ratio s, so that F d for all ratios at once is a sequence of
    // axpys over s (vectorizable, fixed order).
    constexpr int64_t kTb = 8;
    std::vector<float> dt(static_cast<size_t>(k * ns)), acc(static_cast<size_t>(kTb * ns));
    std::vector<double> total(static_cast<size_t>(ns));
    for (int64_t r = b; r < e; ++r) {
      const float* row = w.data<float>() + r * k;
      for (int64_t s = 0; s < ns; ++s) {
        const W4ChannelParams p = w4_channel_params(row, k, ratios[size_t(s)]);
        for (int64_t j = 0; j < k; ++j)
          dt[size_t(j * ns + s)] = row[j] - w4_channel_dequant(w4_channel_quantize(row[j], p), p);
      }
      std::fill(total.begin(), total.end(), 0.0);
      // Blocks of kTb tokens share each residual row dt[j] while it is in L1.
      for (int64_t t0 = 0; t0 < rows; t0 += kTb) {
        const int64_t tb = std::min(kTb, rows - t0);
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (int64_t j = 0; j < k; ++j) {
          const float* dj = dt.data() + j * ns;
          for (int64_t tt = 0; tt < tb; ++tt) {
            const float fj = f[(t0 + tt) * k + j];
            if (fj != 0.0f) axpy(acc.data() + tt * ns, dj, fj, ns);
          }
        }
        for (int64_t i = 0; i < tb * ns; ++i) total[size_t(i % ns)] += double(acc[size_t(i)]) * double(acc[size_t(i)]);
      }
      double best_err = INFINITY;
      for (int64_t s = 0; s < ns; ++s)
        if (total[size_t(s)] < best_err) {
          best_err = total[size_t(s)];
          best[size_t(r)] = ratios[size_t(s)];
        }
    }
  });
  return best;
}

std::vector<float> clip_search_factor_from_hessian(const std::vector<double>& h, int64_t k) {
  check_hessian(h, k, "clip_search_factor_from_hessian");
  // A tiny damping (1e-6 x mean diag; dead inputs get diag 1) keeps a rank-deficient Hessian factorizable
  // without moving the argmin measurably.
  std::vector<double> a = h;
  double mean = 0.0;
  for (int64_t i = 0; i < k; ++i) {
    if (a[size_t(i * k + i)] == 0.0) a[size_t(i * k + i)] = 1.0;
    mean += a[size_t(i * k + i)] / double(k);
  }
  for (int64_t i = 0; i < k; ++i) a[size_t(i * k + i)] += 1e-6 * mean;
  cholesky_lower(a, k, "clip_search_factor_from_hessian");
  std::vector<float> lt(size_t(k * k));
  for (int64_t i = 0; i < k; ++i)
    for (int64_t j = 0; j < k; ++j) lt[size_t(i * k + j)] = float(a[size_t(j * k + i)]);
  return lt;
}

}  // namespace qs::quant
