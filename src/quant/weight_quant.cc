// Offline weight quantizers and 4-bit packing (see weight_quant.h and docs/QUANTIZATION.md for the rules).
#include "quant/weight_quant.h"

#include <cmath>

#include "core/error.h"
#include "core/thread_pool.h"

namespace qs::quant {

void check_weight(const Tensor& w, const char* what) {
  QS_CHECK(w.dtype() == DType::F32 && w.ndim() == 2)
      << what << ": expected an F32 [N, K] weight, got " << w.desc();
  QS_CHECK(w.dim(1) % 2 == 0) << what << ": K = " << w.dim(1) << " must be even for 4-bit packing";
  const float* p = w.data<float>();
  for (int64_t i = 0; i < w.numel(); ++i)
    QS_CHECK(std::isfinite(p[i])) << what << ": non-finite weight at row " << i / w.dim(1) << ", column "
                                  << i % w.dim(1);
}

W4ChannelParams w4_channel_params(const float* row, int64_t k, float clip_ratio) {
  QS_CHECK(clip_ratio > 0.0f && clip_ratio <= 1.0f) << "clip ratio " << clip_ratio << " outside (0, 1]";
  float mn = 0.0f, mx = 0.0f;  // the range always contains 0
  for (int64_t i = 0; i < k; ++i) {
    mn = std::min(mn, row[i]);
    mx = std::max(mx, row[i]);
  }
  mn *= clip_ratio;
  mx *= clip_ratio;
  W4ChannelParams p;
  p.scale = float_to_fp16((mx - mn) / 15.0f);
  const float s = fp16_to_float(p.scale);
  QS_CHECK(std::isfinite(s)) << "weight range [" << mn << ", " << mx << "] overflows the FP16 scale";
  if (s > 0.0f) p.zero = std::clamp(fmt4::round_even(-mn / s), 0, 15);
  p.szero = float_to_fp16(float(p.zero) * s);
  return p;
}

uint16_t g128_level1_scale(const float* row, int64_t k, int protective_range) {
  float amax = 0.0f;
  for (int64_t i = 0; i < k; ++i) amax = std::max(amax, std::fabs(row[i]));
  const uint16_t s = float_to_fp16(amax / float(protective_range));
  QS_CHECK(std::isfinite(fp16_to_float(s))) << "weight absmax " << amax << " overflows the FP16 level-1 scale";
  return s;
}

G128GroupParams g128_group_params(int mn, int mx) {
  QS_CHECK(mn <= mx) << "empty group range [" << mn << ", " << mx << "]";
  G128GroupParams g;
  g.lo = std::min(mn, 0);
  g.hi = std::max(mx, 0);
  const int s2 = std::max(1, fmt4::round_even(float(g.hi - g.lo) / 15.0f));
  QS_CHECK(s2 <= 255) << "group range [" << g.lo << ", " << g.hi << "] needs a level-2 scale above 255";
  g.s2 = uint8_t(s2);
  g.zero = std::clamp(fmt4::round_even(float(-g.lo) / float(s2)), 0, 15);
  QS_CHECK(g.zero * s2 <= 128) << "group range [" << g.lo << ", " << g.hi << "]: zero " << g.zero
                               << " * scale " << s2 << " does not fit INT8";
  g.zn = int8_t(-g.zero * s2);
  return g;
}

Tensor pack_u4(const uint8_t* codes, int64_t n, int64_t k) {
  QS_CHECK(k % 2 == 0) << "pack_u4: K = " << k << " must be even";
  Tensor out(DType::U8, {n, k / 2});
  uint8_t* p = out.data<uint8_t>();
  for (int64_t i = 0; i < n * k; ++i) {
    QS_CHECK(codes[i] < 16) << "pack_u4: code " << int(codes[i]) << " at " << i << " is not 4-bit";
    fmt4::set_nibble(p, i, codes[i]);
  }
  return out;
}

std::vector<uint8_t> unpack_u4(const Tensor& packed) {
  QS_CHECK(packed.dtype() == DType::U8 && packed.ndim() == 2) << "unpack_u4: expected U8 [N, K/2], got "
                                                               << packed.desc();
  const int64_t total = packed.numel() * 2;
  std::vector<uint8_t> codes(size_t(total), 0);
  const uint8_t* p = packed.data<uint8_t>();
  for (int64_t i = 0; i < total; ++i) codes[size_t(i)] = fmt4::get_nibble(p, i);
  return codes;
}

W4PerChannelWeight quantize_w4_per_channel(const Tensor& w, const std::vector<float>& clip_ratios) {
  check_weight(w, "quantize_w4_per_channel");
  const int64_t n = w.dim(0), k = w.dim(1);
  QS_CHECK(clip_ratios.empty() || int64_t(clip_ratios.size()) == n)
      << "quantize_w4_per_channel: " << clip_ratios.size() << " clip ratios for " << n << " channels";
  W4PerChannelWeight r;
  r.scale = Tensor(DType::F16, {n});
  r.szero = Tensor(DType::F16, {n});
  r.dequant = Tensor(DType::F32, {n, k});
  std::vector<uint8_t> codes(size_t(n * k));
  const float* src = w.data<float>();
  uint16_t* sc = r.scale.data<uint16_t>();
  uint16_t* sz = r.szero.data<uint16_t>();
  float* dq = r.dequant.data<float>();
  parallel_for(n, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const float* row = src + i * k;
      const W4ChannelParams p = w4_channel_params(row, k, clip_ratios.empty() ? 1.0f : clip_ratios[size_t(i)]);
      sc[i] = p.scale;
      sz[i] = p.szero;
      for (int64_t j = 0; j < k; ++j) {
        const uint8_t q = w4_channel_quantize(row[j], p);
        codes[size_t(i * k + j)] = q;
        dq[i * k + j] = w4_channel_dequant(q, p);
      }
    }
  });
  r.qweight = pack_u4(codes.data(), n, k);
  return r;
}

W4G128Weight quantize_w4_g128(const Tensor& w, int protective_range) {
  check_weight(w, "quantize_w4_g128");
  QS_CHECK(protective_range >= 1 && protective_range <= 127)
      << "quantize_w4_g128: protective range " << protective_range << " outside [1, 127]";
  const int64_t n = w.dim(0), k = w.dim(1), g = fmt4::kGroupSize;
  QS_CHECK(k % g == 0) << "quantize_w4_g128: K = " << k << " is not a multiple of the group size " << g;
  const int64_t ng = k / g;
  W4G128Weight r;
  r.protective_range = protective_range;
  r.s1 = Tensor(DType::F16, {n});
  r.s2 = Tensor(DType::U8, {n, ng});
  r.zn = Tensor(DType::I8, {n, ng});
  r.dequant = Tensor(DType::F32, {n, k});
  std::vector<uint8_t> codes(size_t(n * k));
  const float* src = w.data<float>();
  uint16_t* s1p = r.s1.data<uint16_t>();
  uint8_t* s2p = r.s2.data<uint8_t>();
  int8_t* znp = r.zn.data<int8_t>();
  float* dq = r.dequant.data<float>();
  parallel_for(n, [&](int64_t b, int64_t e) {
    std::vector<int> q8(static_cast<size_t>(g));
    for (int64_t i = b; i < e; ++i) {
      const float* row = src + i * k;
      s1p[i] = g128_level1_scale(row, k, protective_range);
      const float s1 = fp16_to_float(s1p[i]);
      for (int64_t gi = 0; gi < ng; ++gi) {
        int mn = 0, mx = 0;
        for (int64_t j = 0; j < g; ++j) {
          q8[size_t(j)] = g128_level1_quantize(row[gi * g + j], s1, protective_range);
          mn = std::min(mn, q8[size_t(j)]);
          mx = std::max(mx, q8[size_t(j)]);
        }
        const G128GroupParams gp = g128_group_params(mn, mx);
        s2p[i * ng + gi] = gp.s2;
        znp[i * ng + gi] = gp.zn;
        for (int64_t j = 0; j < g; ++j) {
          const int64_t idx = i * k + gi * g + j;
          const uint8_t q4 = g128_quantize(q8[size_t(j)], gp);
          codes[size_t(idx)] = q4;
          dq[idx] = float(g128_dequant_int8(q4, gp)) * s1;
        }
      }
    }
  });
  r.qweight = pack_u4(codes.data(), n, k);
  return r;
}

Int8ChannelWeight quantize_int8_per_channel(const Tensor& w) {
  QS_CHECK(w.dtype() == DType::F32 && w.ndim() == 2)
      << "quantize_int8_per_channel: expected an F32 [N, K] weight, got " << w.desc();
  const int64_t n = w.dim(0), k = w.dim(1);
  Int8ChannelWeight r;
  r.qweight = Tensor(DType::I8, {n, k});
  r.scale = Tensor(DType::F16, {n});
  r.dequant = Tensor(DType::F32, {n, k});
  const float* src = w.data<float>();
  int8_t* q = r.qweight.data<int8_t>();
  uint16_t* sc = r.scale.data<uint16_t>();
  float* dq = r.dequant.data<float>();
  for (int64_t i = 0; i < n; ++i) {
    const float* row = src + i * k;
    float amax = 0.0f;
    for (int64_t j = 0; j < k; ++j) {
      QS_CHECK(std::isfinite(row[j])) << "quantize_int8_per_channel: non-finite weight at row " << i
                                      << ", column " << j;
      amax = std::max(amax, std::fabs(row[j]));
    }
    sc[i] = float_to_fp16(amax / 127.0f);
    const float s = fp16_to_float(sc[i]);
    QS_CHECK(std::isfinite(s)) << "quantize_int8_per_channel: absmax " << amax << " overflows the FP16 scale";
    for (int64_t j = 0; j < k; ++j) {
      const int v = s > 0.0f ? std::clamp(fmt4::round_even(row[j] / s), -127, 127) : 0;
      q[i * k + j] = int8_t(v);
      dq[i * k + j] = float(v) * s;
    }
  }
  return r;
}

Tensor dequantize(const W4PerChannelWeight& q) {
  const int64_t n = q.qweight.dim(0), k = q.qweight.dim(1) * 2;
  QS_CHECK(q.scale.numel() == n && q.szero.numel() == n) << "per-channel W4: scale/szero do not match " << n
                                                         << " channels";
  const std::vector<uint8_t> codes = unpack_u4(q.qweight);
  Tensor out(DType::F32, {n, k});
  float* o = out.data<float>();
  const uint16_t* s = q.scale.data<uint16_t>();
  const uint16_t* sz = q.szero.data<uint16_t>();
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < k; ++j)
      o[i * k + j] = fmt4::dequant_w4_per_channel(codes[size_t(i * k + j)], s[i], sz[i]);
  return out;
}

Tensor dequantize(const W4G128Weight& q) {
  const int64_t n = q.qweight.dim(0), k = q.qweight.dim(1) * 2, g = fmt4::kGroupSize;
  QS_CHECK(k % g == 0 && q.s1.numel() == n && q.s2.numel() == n * (k / g) && q.zn.numel() == n * (k / g))
      << "g128 W4: scales do not match qweight " << q.qweight.desc();
  const std::vector<uint8_t> codes = unpack_u4(q.qweight);
  Tensor out(DType::F32, {n, k});
  float* o = out.data<float>();
  const uint16_t* s1 = q.s1.data<uint16_t>();
  const uint8_t* s2 = q.s2.data<uint8_t>();
  const int8_t* zn = q.zn.data<int8_t>();
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < k; ++j) {
      const int64_t gi = i * (k / g) + j / g;
      o[i * k + j] = float(fmt4::dequant_w4_g128_to_int8(codes[size_t(i * k + j)], s2[gi], zn[gi])) *
                     fp16_to_float(s1[i]);
    }
  return out;
}

Tensor dequantize(const Int8ChannelWeight& q) {
  const int64_t n = q.qweight.dim(0), k = q.qweight.dim(1);
  QS_CHECK(q.scale.numel() == n) << "INT8 weight: scale does not match " << n << " channels";
  Tensor out(DType::F32, {n, k});
  float* o = out.data<float>();
  const int8_t* v = q.qweight.data<int8_t>();
  const uint16_t* s = q.scale.data<uint16_t>();
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < k; ++j) o[i * k + j] = float(v[i * k + j]) * fp16_to_float(s[i]);
  return out;
}

}  // namespace qs::quant
