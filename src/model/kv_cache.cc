// Reference per-sequence KV cache (see kv_cache.h).
#include "model/kv_cache.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"

namespace qs::model {

const char* kv_mode_name(KvMode m) { return m == KvMode::kKv4 ? "kv4" : "fp32"; }

KvCache::KvCache(int num_layers, int num_kv_heads, int head_dim, KvMode mode)
    : mode_(mode), kv_heads_(num_kv_heads), head_dim_(head_dim), layers_(size_t(std::max(0, num_layers))) {
  QS_CHECK(num_layers > 0 && num_kv_heads > 0 && head_dim > 0)
      << "KvCache: bad shape layers=" << num_layers << " kv_heads=" << num_kv_heads << " head_dim=" << head_dim;
  QS_CHECK(mode != KvMode::kKv4 || head_dim % 2 == 0) << "KV4 cache needs an even head_dim, got " << head_dim;
}

void KvCache::reserve(int64_t n) {
  if (n <= capacity_) return;
  const int64_t cap = std::max(n, capacity_ * 2);
  const size_t row = size_t(kv_heads_) * size_t(head_dim_);
  for (auto& l : layers_) {
    l.k.resize(size_t(cap) * row);
    l.v.resize(size_t(cap) * row);
    if (mode_ == KvMode::kKv4) {
      l.k4.resize(size_t(cap) * row / 2);
      l.v4.resize(size_t(cap) * row / 2);
      l.kp.resize(size_t(cap) * size_t(kv_heads_));
      l.vp.resize(size_t(cap) * size_t(kv_heads_));
    }
  }
  capacity_ = cap;
}

void KvCache::write(int layer, int64_t pos, const float* k, const float* v, int64_t n) {
  QS_CHECK(layer >= 0 && layer < num_layers()) << "KvCache: layer " << layer << " out of range";
  QS_CHECK(pos >= 0 && pos <= length_) << "KvCache: write at position " << pos << " would leave a hole (length "
                                       << length_ << ")";
  reserve(pos + n);
  Layer& l = layers_[size_t(layer)];
  const size_t row = size_t(kv_heads_) * size_t(head_dim_);
  if (mode_ == KvMode::kFp32) {
    std::memcpy(l.k.data() + size_t(pos) * row, k, size_t(n) * row * sizeof(float));
    std::memcpy(l.v.data() + size_t(pos) * row, v, size_t(n) * row * sizeof(float));
    return;
  }
  const int64_t d = head_dim_;
  for (int64_t t = 0; t < n; ++t)
    for (int64_t h = 0; h < kv_heads_; ++h) {
      const size_t g = size_t(pos + t) * size_t(kv_heads_) + size_t(h);  // group index (position, head)
      const size_t src = size_t(t * kv_heads_ + h) * size_t(d);
      for (int which = 0; which < 2; ++which) {
        const float* x = (which ? v : k) + src;
        uint8_t* packed = (which ? l.v4 : l.k4).data() + g * size_t(d / 2);
        fmt4::Kv4Params& p = (which ? l.vp : l.kp)[g];
        float* deq = (which ? l.v : l.k).data() + g * size_t(d);
        std::memset(packed, 0, size_t(d / 2));
        p = fmt4::quantize_kv4_group(x, d, packed);
        for (int64_t e = 0; e < d; ++e) deq[e] = fmt4::dequantize_kv4(fmt4::get_nibble(packed, e), p);
      }
    }
}

void KvCache::write_packed(int layer, int64_t pos, const uint8_t* k4, const fmt4::Kv4Params* kp, const uint8_t* v4,
                           const fmt4::Kv4Params* vp, int64_t n) {
  QS_CHECK(mode_ == KvMode::kKv4) << "KvCache: write_packed needs a KV4 cache";
  QS_CHECK(layer >= 0 && layer < num_layers()) << "KvCache: layer " << layer << " out of range";
  QS_CHECK(pos >= 0 && pos <= length_ && n >= 0) << "KvCache: packed write of " << n << " positions at " << pos
                                                 << " would leave a hole (length " << length_ << ")";
  reserve(pos + n);
  Layer& l = layers_[size_t(layer)];
  const size_t d = size_t(head_dim_), groups = size_t(n) * size_t(kv_heads_), g0 = size_t(pos) * size_t(kv_heads_);
  std::memcpy(l.k4.data() + g0 * d / 2, k4, groups * d / 2);
  std::memcpy(l.v4.data() + g0 * d / 2, v4, groups * d / 2);
  std::copy(kp, kp + groups, l.kp.begin() + int64_t(g0));
  std::copy(vp, vp + groups, l.vp.begin() + int64_t(g0));
  for (size_t g = g0; g < g0 + groups; ++g)
    for (size_t e = 0; e < d; ++e) {  // the dequantization write() does
      l.k[g * d + e] = fmt4::dequantize_kv4(fmt4::get_nibble(l.k4.data() + g * d / 2, int64_t(e)), l.kp[g]);
      l.v[g * d + e] = fmt4::dequantize_kv4(fmt4::get_nibble(l.v4.data() + g * d / 2, int64_t(e)), l.vp[g]);
    }
}

void KvCache::set_length(int64_t n) {
  QS_CHECK(n >= 0 && n <= capacity_) << "KvCache: length " << n << " beyond the written capacity " << capacity_;
  length_ = n;
}

}  // namespace qs::model
