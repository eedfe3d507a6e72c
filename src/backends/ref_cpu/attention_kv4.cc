// CPU references for kernels/kv_cache and kernels/attention (see attention_kv4.h).
#include "backends/ref_cpu/attention_kv4.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/dtype.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "formats/formats.h"
#include "formats/fp8.h"

namespace qs::ref_cpu {

using kernels::KvCacheLayout;
using qs::KvDType;

void rope_rotate_half(const float* x, float* out, int head_dim, int32_t pos, const float* inv_freq) {
  const int half = head_dim / 2;
  for (int i = 0; i < half; ++i) {
    const float angle = float(pos) * inv_freq[i];
    const float c = float(std::cos(double(angle)));
    const float s = float(std::sin(double(angle)));
    // Each product rounded to fp32 before the add: volatile-free, x86-64 without -mfma never contracts.
    const float a = x[i] * c, b = x[i + half] * s;
    const float d = x[i + half] * c, e = x[i] * s;
    out[i] = a - b;
    out[i + half] = d + e;
  }
}

static void check_layout(const KvCacheLayout& l) {
  QS_CHECK(l.page_size > 0 && l.page_size % 16 == 0) << "page_size must be a positive multiple of 16, got "
                                                     << l.page_size;
  QS_CHECK(l.head_dim == 64 || l.head_dim == 128) << "head_dim must be 64 or 128, got " << l.head_dim;
  QS_CHECK(l.num_kv_heads > 0) << "num_kv_heads must be positive";
}

static void write_token(uint8_t* pool, const KvCacheLayout& l, int32_t slot, int32_t kv_head, const float* x) {
  const int64_t page = slot / l.page_size;
  const int32_t off = slot % l.page_size;
  uint8_t* block = pool + l.block_offset(page, kv_head);
  if (l.dtype == KvDType::kKv4) {
    const fmt4::Kv4Params prm = fmt4::quantize_kv4_group(x, l.head_dim, block + l.data_offset(off));
    std::memcpy(block + l.scale_offset(off), &prm.scale, 2);
    std::memcpy(block + l.zero_offset(off), &prm.zero, 2);
  } else if (l.dtype == KvDType::kFp8) {
    const uint16_t sh = fp8::quantize_fp8_kv_row(x, l.head_dim, block + l.data_offset(off));
    std::memcpy(block + l.scale_offset(off), &sh, 2);
  } else {
    uint16_t* d = reinterpret_cast<uint16_t*>(block + l.data_offset(off));
    for (int i = 0; i < l.head_dim; ++i) d[i] = float_to_fp16(x[i]);
  }
}

void kv_cache_write(const kernels::KvWriteParams& p) {
  const KvCacheLayout& l = p.layout;
  check_layout(l);
  const int d = l.head_dim, hq = p.num_q_heads, hkv = l.num_kv_heads;
  QS_CHECK(hq > 0 && hq % hkv == 0) << "num_q_heads " << hq << " must be a multiple of num_kv_heads " << hkv;
  QS_CHECK(p.qkv_stride >= int64_t(hq + 2 * hkv) * d) << "qkv_stride " << p.qkv_stride << " too small";
  std::vector<float> x(d), r(d);
  for (int32_t t = 0; t < p.num_tokens; ++t) {
    const uint16_t* row = p.qkv + t * p.qkv_stride;
    const int32_t pos = p.positions[t], slot = p.slot_mapping[t];
    for (int h = 0; h < hq + 2 * hkv; ++h) {
      for (int i = 0; i < d; ++i) x[i] = fp16_to_float(row[h * d + i]);
      if (h < hq + hkv) rope_rotate_half(x.data(), r.data(), d, pos, p.inv_freq);
      else r = x;
      if (h < hq) {
        for (int i = 0; i < d; ++i) p.q_out[(int64_t(t) * hq + h) * d + i] = float_to_fp16(r[i]);
        continue;
      }
      const bool is_k = h < hq + hkv;
      const int kvh = is_k ? h - hq : h - hq - hkv;
      uint16_t* copy = is_k ? p.k_out : p.v_out;
      if (copy)
        for (int i = 0; i < d; ++i) copy[(int64_t(t) * hkv + kvh) * d + i] = float_to_fp16(r[i]);
      if (slot >= 0) write_token(is_k ? p.k_pool : p.v_pool, l, slot, kvh, r.data());
    }
  }
}

void read_cache_token(const uint8_t* pool, const KvCacheLayout& l, const int32_t* pages, int32_t tok,
                      int32_t kv_head, float* out) {
  const uint8_t* block = pool + l.block_offset(pages[tok / l.page_size], kv_head);
  const int32_t off = tok % l.page_size;
  if (l.dtype == KvDType::kKv4) {
    fmt4::Kv4Params prm;
    std::memcpy(&prm.scale, block + l.scale_offset(off), 2);
    std::memcpy(&prm.zero, block + l.zero_offset(off), 2);
    const uint8_t* data = block + l.data_offset(off);
    for (int i = 0; i < l.head_dim; ++i) out[i] = fmt4::dequantize_kv4(fmt4::get_nibble(data, i), prm);
  } else if (l.dtype == KvDType::kFp8) {
    uint16_t sh;
    std::memcpy(&sh, block + l.scale_offset(off), 2);
    const float s = fp16_to_float(sh);
    const uint8_t* data = block + l.data_offset(off);
    for (int i = 0; i < l.head_dim; ++i) out[i] = fp8::e4m3_to_float(data[i]) * s;
  } else {
    const uint16_t* d = reinterpret_cast<const uint16_t*>(block + l.data_offset(off));
    for (int i = 0; i < l.head_dim; ++i) out[i] = fp16_to_float(d[i]);
  }
}

// Softmax attention of one query over n keys/values given as callbacks filling fp32 rows; double accumulation.
template <typename KeyFn, typename ValFn>
static void attend(const float* q, int d, int64_t n, double scale, KeyFn key, ValFn val, float* out) {
  std::vector<double> s(size_t(std::max<int64_t>(n, 1)));
  std::vector<float> row(d);
  double mx = -INFINITY;
  for (int64_t j = 0; j < n; ++j) {
    key(j, row.data());
    double acc = 0;
    for (int i = 0; i < d; ++i) acc += double(q[i]) * double(row[i]);
    s[j] = acc * scale;
    mx = std::max(mx, s[j]);
  }
  std::vector<double> o(d, 0.0);
  double l = 0;
  for (int64_t j = 0; j < n; ++j) {
    const double pj = std::exp(s[j] - mx);
    l += pj;
    val(j, row.data());
    for (int i = 0; i < d; ++i) o[i] += pj * double(row[i]);
  }
  for (int i = 0; i < d; ++i) out[i] = n > 0 ? float(o[i] / l) : 0.0f;
}

void decode_attention(const kernels::DecodeParams& p, float* out) {
  const KvCacheLayout& l = p.layout;
  check_layout(l);
  const int d = l.head_dim, hq = p.num_q_heads, group = hq / l.num_kv_heads;
  QS_CHECK(hq % l.num_kv_heads == 0) << "num_q_heads must be a multiple of num_kv_heads";
  parallel_for(int64_t(p.batch) * hq, [&](int64_t begin, int64_t end) {
    std::vector<float> q(d);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / hq;
      const int h = int(bh % hq), kvh = h / group;
      for (int i = 0; i < d; ++i) q[i] = fp16_to_float(p.q[bh * d + i]);
      const int32_t* pages = p.block_table + b * p.block_table_stride;
      attend(
          q.data(), d, p.context_lens[b], p.softmax_scale,
          [&](int64_t j, float* r) { read_cache_token(p.k_pool, l, pages, int32_t(j), kvh, r); },
          [&](int64_t j, float* r) { read_cache_token(p.v_pool, l, pages, int32_t(j), kvh, r); }, out + bh * d);
    }
  });
}

void prefill_attention(const kernels::PrefillParams& p, float* out) {
  const int d = p.head_dim, hq = p.num_q_heads, hkv = p.num_kv_heads;
  QS_CHECK(hkv > 0 && hq % hkv == 0) << "num_q_heads must be a multiple of num_kv_heads";
  if (p.prefix_lens) {
    check_layout(p.layout);
    QS_CHECK(p.layout.head_dim == d && p.layout.num_kv_heads == hkv) << "cache layout does not match the heads";
  }
  const int group = hq / hkv;
  const int64_t total = p.cu_seqlens[p.batch];
  parallel_for(total * hq, [&](int64_t begin, int64_t end) {
    std::vector<float> q(d);
    for (int64_t th = begin; th < end; ++th) {
      const int64_t t = th / hq;
      const int h = int(th % hq), kvh = h / group;
      int b = 0;
      while (p.cu_seqlens[b + 1] <= t) ++b;
      const int64_t start = p.cu_seqlens[b], i = t - start;
      const int64_t prefix = p.prefix_lens ? p.prefix_lens[b] : 0;
      const int32_t* pages = p.prefix_lens ? p.block_table + int64_t(b) * p.block_table_stride : nullptr;
      for (int k = 0; k < d; ++k) q[k] = fp16_to_float(p.q[th * d + k]);
      auto fetch = [&](const uint16_t* src, const uint8_t* pool, int64_t j, float* r) {
        if (j < prefix) {
          read_cache_token(pool, p.layout, pages, int32_t(j), kvh, r);
        } else {
          const uint16_t* s = src + ((start + j - prefix) * hkv + kvh) * d;
          for (int k = 0; k < d; ++k) r[k] = fp16_to_float(s[k]);
        }
      };
      attend(
          q.data(), d, prefix + i + 1, p.softmax_scale,
          [&](int64_t j, float* r) { fetch(p.k, p.k_pool, j, r); },
          [&](int64_t j, float* r) { fetch(p.v, p.v_pool, j, r); }, out + th * d);
    }
  });
}

}  // namespace qs::ref_cpu
