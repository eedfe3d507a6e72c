// Calibration windows and layer-by-layer capture (see calibration.h).
#include "quant/qoq/calibration.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <mutex>
#include <numeric>
#include <random>
#include <sstream>

#include "core/error.h"
#include "core/thread_pool.h"

namespace qs::quant::qoq {

const char* linear_input_name(LinearInput i) {
  switch (i) {
    case LinearInput::kQkv: return "qkv";
    case LinearInput::kO: return "o";
    case LinearInput::kGateUp: return "gate_up";
    case LinearInput::kDown: return "down";
  }
  return "?";
}

CalibrationSet sample_calibration(const tokenizer::Tokenizer& tok, const std::string& text, int samples, int len,
                                  uint64_t seed) {
  QS_CHECK(samples >= 1 && len >= 2) << "calibration needs samples >= 1 and len >= 2 (got " << samples << " x "
                                     << len << ")";
  const std::vector<int> ids = tok.encode(text, /*add_special_tokens=*/false);
  CalibrationSet set;
  set.text_tokens = int64_t(ids.size());
  const int64_t available = set.text_tokens / len;
  QS_CHECK(available >= samples) << "calibration text too short: " << set.text_tokens << " tokens give "
                                 << available << " windows of " << len << " tokens, but " << samples
                                 << " were asked for (--calib-samples " << samples << " --calib-len " << len << ")";
  std::vector<int64_t> pick(static_cast<size_t>(available));
  std::iota(pick.begin(), pick.end(), 0);
  std::mt19937_64 rng(seed);
  for (int64_t i = 0; i < samples; ++i) {  // partial Fisher-Yates: the first `samples` entries
    std::uniform_int_distribution<int64_t> d(i, available - 1);
    std::swap(pick[size_t(i)], pick[size_t(d(rng))]);
  }
  pick.resize(size_t(samples));
  std::sort(pick.begin(), pick.end());
  for (int64_t w : pick) set.windows.emplace_back(ids.begin() + w * len, ids.begin() + (w + 1) * len);
  return set;
}

CalibrationSet sample_calibration_file(const tokenizer::Tokenizer& tok, const std::string& path, int samples,
                                       int len, uint64_t seed) {
  std::ifstream f(path, std::ios::binary);
  QS_CHECK(f.good()) << "cannot read calibration text " << path;
  std::stringstream ss;
  ss << f.rdbuf();
  try {
    return sample_calibration(tok, ss.str(), samples, len, seed);
  } catch (const Error& e) {
    throw Error(path + ": " + e.what());
  }
}

LayerRunner::LayerRunner(model::Model& model, const CalibrationSet& set, int windows_per_call)
    : model_(model), windows_per_call_(std::max(1, windows_per_call)) {
  QS_CHECK(!set.windows.empty()) << "calibration: no windows";
  samples_ = int64_t(set.windows.size());
  len_ = int64_t(set.windows[0].size());
  const int64_t h = model.config().hidden_size;
  hidden_.resize(size_t(samples_ * len_ * h));
  for (int64_t s = 0; s < samples_; ++s) {
    QS_CHECK(int64_t(set.windows[size_t(s)].size()) == len_) << "calibration: windows of different lengths";
    model.embed(set.windows[size_t(s)].data(), len_, hidden_.data() + s * len_ * h);
  }
}

namespace {

void update_absmax(std::vector<float>& mx, const float* x, int64_t m, int64_t k) {
  if (mx.empty()) mx.assign(size_t(k), 0.0f);
  for (int64_t r = 0; r < m; ++r)
    for (int64_t j = 0; j < k; ++j) mx[size_t(j)] = std::max(mx[size_t(j)], std::fabs(x[r * k + j]));
}

int input_of(const std::string& name) {
  auto ends = [&](const char* s) {
    const size_t n = std::strlen(s);
    return name.size() >= n && name.compare(name.size() - n, n, s) == 0;
  };
  if (ends("q_proj")) return int(LinearInput::kQkv);
  if (ends("o_proj")) return int(LinearInput::kO);
  if (ends("gate_proj")) return int(LinearInput::kGateUp);
  if (ends("down_proj")) return int(LinearInput::kDown);
  return -1;  // k/v/up: same input as q/gate
}

}  // namespace

LayerCapture LayerRunner::run(int layer, const CaptureOptions& opt, bool advance) {
  const auto& c = model_.config();
  const int64_t h = c.hidden_size, kv = c.kv_size(), stride = std::max(1, opt.hessian_stride);
  LayerCapture cap;
  if (opt.hessians) {
    const int64_t dims[kNumLinearInputs] = {h, c.q_size(), h, c.intermediate_size};
    for (int i = 0; i < kNumLinearInputs; ++i) cap.hessian[i] = std::make_unique<HessianAccumulator>(dims[i]);
  }
  if (opt.keys) cap.key_max.assign(size_t(kv), 0.0f);
  // Rows kept for the smoothing search: global token indices t * tokens / keep.
  std::vector<int64_t> keep;
  if (opt.keep_rows > 0) {
    const int64_t n = std::min(opt.keep_rows, tokens());
    for (int64_t i = 0; i < n; ++i) keep.push_back(i * tokens() / n);
    const int64_t dims[kNumLinearInputs] = {h, c.q_size(), h, c.intermediate_size};
    for (int i = 0; i < kNumLinearInputs; ++i) cap.rows[i] = Tensor(DType::F32, {n, dims[i]});
  }
  // Attention sample: windows attn_win[i] (evenly spaced), queries at q_pos (evenly spaced, centred).
  std::vector<int64_t> attn_slot(size_t(samples_), -1);  // sample index -> slot in cap.attn, or -1
  std::vector<double> inv_freq;
  AttentionSample& as = cap.attn;
  if (opt.attn_windows > 0 && opt.attn_queries > 0) {
    as.windows = std::min<int64_t>(opt.attn_windows, samples_);
    as.len = len_;
    for (int64_t i = 0; i < as.windows; ++i) attn_slot[size_t(i * samples_ / as.windows)] = i;
    const int64_t nq = std::min<int64_t>(opt.attn_queries, len_);
    for (int64_t i = 0; i < nq; ++i) as.q_pos.push_back(((2 * i + 1) * len_) / (2 * nq));
    as.q.assign(size_t(as.windows * nq * c.q_size()), 0.0f);
    as.k.assign(size_t(as.windows * len_ * kv), 0.0f);
    as.v.assign(as.k.size(), 0.0f);
    inv_freq = io::rope_inv_freq(c);
  }
  std::vector<float> sub, qrows;
  int64_t row0 = 0;  // global token index of the current call's first row
  model_.set_observer([&](const std::string& name, const float* x, int64_t m, int64_t k) {
    const int which = input_of(name);
    if (which < 0) return;
    if (which == int(LinearInput::kQkv) && as.windows > 0) {
      // Post-RoPE queries of the sampled positions of the sampled windows in this call.
      const int64_t nq = as.nq();
      for (int64_t s = row0 / len_; s < (row0 + m) / len_; ++s) {
        if (attn_slot[size_t(s)] < 0) continue;
        qrows.resize(size_t(nq * k));
        for (int64_t i = 0; i < nq; ++i)
          std::memcpy(qrows.data() + i * k, x + (s * len_ - row0 + as.q_pos[size_t(i)]) * k, size_t(k) * 4);
        float* q = as.q.data() + attn_slot[size_t(s)] * nq * c.q_size();
        model_.linear(name).forward(qrows.data(), nq, q);
        model_.backend().rope(q, nq, c.num_heads, c.head_dim, as.q_pos.data(), inv_freq.data());
      }
    }
    if (opt.absmax) update_absmax(cap.absmax[which], x, m, k);
    if (opt.hessians) {
      if (stride == 1) {
        cap.hessian[which]->add(x, m);
      } else {
        sub.clear();
        for (int64_t r = 0; r < m; r += stride) sub.insert(sub.end(), x + r * k, x + (r + 1) * k);
        cap.hessian[which]->add(sub.data(), int64_t(sub.size()) / k);
      }
    }
    for (size_t i = 0; i < keep.size(); ++i)
      if (keep[i] >= row0 && keep[i] < row0 + m)
        std::memcpy(cap.rows[which].data<float>() + int64_t(i) * k, x + (keep[i] - row0) * k, size_t(k) * 4);
  });
  struct ObserverReset {
    model::Model& m;
    ~ObserverReset() { m.set_observer({}); }
  } reset{model_};

  std::vector<model::KvCache> caches;
  for (int i = 0; i < windows_per_call_; ++i) caches.push_back(model_.new_cache());
  std::vector<float> scratch;
  for (int64_t s0 = 0; s0 < samples_; s0 += windows_per_call_) {
    QS_CHECK(!(opt.cancelled && opt.cancelled())) << "interrupted";
    const int64_t nw = std::min<int64_t>(windows_per_call_, samples_ - s0);
    float* hid = hidden_.data() + s0 * len_ * h;
    if (!advance) {
      scratch.assign(hid, hid + nw * len_ * h);
      hid = scratch.data();
    }
    std::vector<model::SeqSlice> slices;
    for (int64_t w = 0; w < nw; ++w) slices.push_back({w * len_, len_, &caches[size_t(w)]});
    row0 = s0 * len_;
    model_.forward_layer(layer, hid, slices);
    if (opt.keys)
      for (int64_t w = 0; w < nw; ++w) {
        const float* k = caches[size_t(w)].k(layer);  // rows 0 .. len-1 of this layer, after RoPE
        for (int64_t t = 0; t < len_; ++t)
          for (int64_t j = 0; j < kv; ++j)
            cap.key_max[size_t(j)] = std::max(cap.key_max[size_t(j)], std::fabs(k[t * kv + j]));
      }
    for (int64_t w = 0; w < nw; ++w) {
      const int64_t slot = attn_slot[size_t(s0 + w)];
      if (slot < 0) continue;
      std::copy_n(caches[size_t(w)].k(layer), len_ * kv, as.k.data() + slot * len_ * kv);
      std::copy_n(caches[size_t(w)].v(layer), len_ * kv, as.v.data() + slot * len_ * kv);
    }
  }
  return cap;
}

void LayerRunner::set_hidden(const std::vector<float>& hidden) {
  QS_CHECK(hidden.size() == hidden_.size()) << "calibration: " << hidden.size() << " hidden values given, expected "
                                            << hidden_.size();
  hidden_ = hidden;
}

LayerInputs take_inputs(LayerCapture& cap) {
  LayerInputs in;
  for (int i = 0; i < kNumLinearInputs; ++i) {
    if (cap.hessian[i]) in.hessian[i] = cap.hessian[i]->hessian();
    if (!cap.hessian_full[i].empty()) in.hessian[i] = std::move(cap.hessian_full[i]);
    in.rows[i] = std::move(cap.rows[i]);
  }
  return in;
}

void permute_scale_input(LayerInputs& in, LinearInput which, const std::vector<int32_t>& perm,
                         const std::vector<float>& f) {
  const int w = int(which);
  const int64_t k = int64_t(perm.size());
  QS_CHECK(f.empty() || int64_t(f.size()) == k) << "permute_scale_input: " << f.size() << " scales for " << k
                                                << " channels";
  auto factor = [&](int64_t j) { return f.empty() ? 1.0 : double(f[size_t(j)]); };
  if (!in.hessian[w].empty()) {
    QS_CHECK(int64_t(in.hessian[w].size()) == k * k) << "permute_scale_input: Hessian is not " << k << " x " << k;
    // A copy of H to gather from, in a buffer kept across calls (its pages are touched once, not per layer: a
    // 14336-wide down_proj Hessian is 1.6 GB), copied in parallel.
    static std::vector<double> scratch;
    static std::mutex scratch_mu;
    std::lock_guard<std::mutex> lock(scratch_mu);
    if (scratch.size() < size_t(k * k)) scratch.resize(size_t(k * k));
    const double* src = in.hessian[w].data();
    double* old = scratch.data();
    parallel_for(k, [&](int64_t i0, int64_t i1) { std::copy(src + i0 * k, src + i1 * k, old + i0 * k); });
    parallel_for(k, [&](int64_t i0, int64_t i1) {  // rows are independent: the same result for any split
      for (int64_t i = i0; i < i1; ++i)
        for (int64_t j = 0; j < k; ++j) {
          const int64_t pi = perm[size_t(i)], pj = perm[size_t(j)];
          in.hessian[w][size_t(i * k + j)] = old[pi * k + pj] * factor(pi) * factor(pj);
        }
    });
  }
  if (in.rows[w].numel() > 0) {
    QS_CHECK(in.rows[w].dim(1) == k) << "permute_scale_input: rows have " << in.rows[w].dim(1) << " channels, not "
                                     << k;
    float* p = in.rows[w].data<float>();
    std::vector<float> old(static_cast<size_t>(k));
    for (int64_t r = 0; r < in.rows[w].dim(0); ++r) {
      std::copy_n(p + r * k, k, old.data());
      for (int64_t i = 0; i < k; ++i) p[r * k + i] = float(double(old[size_t(perm[size_t(i)])]) * factor(perm[size_t(i)]));
    }
  }
}

}  // namespace qs::quant::qoq
