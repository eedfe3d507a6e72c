// A host model of the attention kernels' rounding steps (TESTING.md "Attention tolerances"), run on the very inputs
// of the GPU attention tests, so the derived bounds can be checked for room without a GPU: every sequence's
// predicted normalized error against the fp64 reference must stay below half the bound.
// The model follows the kernels' arithmetic order where it matters for rounding: tiles of 16 keys (decode) or 64
// keys (prefill) with the running maximum, P = exp2(s - m) rounded to fp16 (decode: times the V scale, FP8 also
// times 256) before the P V product, fp32 accumulation, the KV4 zero applied in fp32 with the unrounded P, the KV4
// scores from 1024-biased codes minus the fp32 offset, the fp16 dequantized K/V of a quantized prefill prefix and
// the fp16 output. It does not model the tensor cores' internal accumulation order (fp32, below 1e-5 here).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <set>

#include "backends/ref_cpu/attention_kv4.h"
#include "kernels/attention_test_util.h"

namespace qs {
namespace {

using kernels::KvCacheLayout;
using test::PagedBatch;

float r16(float x) { return fp16_to_float(float_to_fp16(x)); }

// Raw cached token: codes / values as the decode kernel feeds them to the mma, plus scale and zero.
struct RawToken {
  std::vector<float> val;  // KV4: codes n; FP8: e4m3 values (exact in fp16); FP16: values
  float scale = 1.0f, zero = 0.0f;
};
RawToken raw_token(const uint8_t* pool, const KvCacheLayout& l, const int32_t* pages, int32_t tok, int32_t kvh) {
  const uint8_t* block = pool + l.block_offset(pages[tok / l.page_size], kvh);
  const int32_t off = tok % l.page_size;
  const uint8_t* data = block + l.data_offset(off);
  RawToken r;
  r.val.resize(size_t(l.head_dim));
  uint16_t h;
  if (l.dtype == KvDType::kKv4 || l.dtype == KvDType::kFp8) {
    std::memcpy(&h, block + l.scale_offset(off), 2);
    r.scale = fp16_to_float(h);
  }
  if (l.dtype == KvDType::kKv4) {
    std::memcpy(&h, block + l.zero_offset(off), 2);
    r.zero = fp16_to_float(h);
  }
  for (int i = 0; i < l.head_dim; ++i) {
    if (l.dtype == KvDType::kKv4) {
      r.val[size_t(i)] = float(fmt4::get_nibble(data, i));
    } else if (l.dtype == KvDType::kFp8) {
      r.val[size_t(i)] = fp8::e4m3_to_float(data[i]);
    } else {
      std::memcpy(&h, data + 2 * i, 2);
      r.val[size_t(i)] = fp16_to_float(h);
    }
  }
  return r;
}

// The decode kernel's rounding model for one query head over one sequence's cache; fp16-rounded output.
std::vector<float> model_decode_head(const PagedBatch& pb, const uint16_t* q16, const int32_t* pages, int32_t ctx,
                                     int32_t kvh, float softmax_scale) {
  const KvCacheLayout& l = pb.layout;
  const int d = l.head_dim;
  const bool kv4 = l.dtype == KvDType::kKv4, fp8 = l.dtype == KvDType::kFp8;
  const float kvscale = fp8 ? 256.0f : 1.0f;
  const float sl2 = softmax_scale * 1.4426950408889634f;
  std::vector<float> q(static_cast<size_t>(d)), qp(static_cast<size_t>(d));
  float sumq = 0, sumqp = 0;
  for (int i = 0; i < d; ++i) {
    q[size_t(i)] = fp16_to_float(q16[i]);
    qp[size_t(i)] = (kv4 && i % 8 >= 4) ? q[size_t(i)] / 16 : q[size_t(i)];  // exact (power of two)
    sumq += q[size_t(i)];
    sumqp += qp[size_t(i)];
  }
  const float qoff = 1024.0f * sumqp;
  std::vector<float> o(size_t(d), 0.0f);
  float m = -INFINITY, lsum = 0, zc = 0;
  for (int32_t t0 = 0; t0 < ctx; t0 += 16) {
    const int32_t t1 = std::min(ctx, t0 + 16);
    std::vector<float> s;
    std::vector<RawToken> vt;
    float tmax = -INFINITY;
    for (int32_t j = t0; j < t1; ++j) {
      const RawToken k = raw_token(pb.k_pool.data(), l, pages, j, kvh);
      float acc = 0;
      for (int i = 0; i < d; ++i) {
        const float code = kv4 ? (i % 8 >= 4 ? 1024.0f + 16.0f * k.val[size_t(i)] : 1024.0f + k.val[size_t(i)])
                               : k.val[size_t(i)];
        acc += code * qp[size_t(i)];
      }
      const float sc = kv4 ? (acc - std::fmaf(k.zero, sumq, qoff)) * (k.scale * sl2)
                           : fp8 ? acc * (k.scale * sl2) : acc * sl2;
      s.push_back(sc);
      tmax = std::max(tmax, sc);
      vt.push_back(raw_token(pb.v_pool.data(), l, pages, j, kvh));
    }
    const float mnew = std::max(m, tmax);
    const float c = std::exp2(m - mnew);
    m = mnew;
    lsum *= c;
    zc *= c;
    for (float& x : o) x *= c;
    for (size_t j = 0; j < s.size(); ++j) {
      const float p = std::exp2(s[j] - mnew);
      lsum += p;
      const float pv = p * ((kv4 || fp8) ? vt[j].scale * kvscale : 1.0f);
      const float p16 = r16(pv);
      if (kv4) zc += pv * vt[j].zero;
      for (int i = 0; i < d; ++i) o[size_t(i)] += p16 * vt[j].val[size_t(i)];
    }
  }
  std::vector<float> out(static_cast<size_t>(d));
  for (int i = 0; i < d; ++i) out[size_t(i)] = r16((o[size_t(i)] - zc) * (1.0f / kvscale) / lsum);
  return out;
}

TEST(AttentionRoundingModel, DecodeBoundsHaveRoomOnTheGpuTestInputs) {
  double worst_ratio = 0;
  for (const test::DecodeShape& sh : test::decode_shapes()) {
    const std::vector<int32_t>& ctx = test::decode_contexts();
    PagedBatch a = test::make_paged_batch({16, sh.hkv, sh.d, sh.dt}, sh.hq, ctx, test::decode_seed(sh));
    const auto q = test::last_token_queries(a);
    std::vector<float> ref(q.size()), model(q.size());
    const kernels::DecodeParams p = test::decode_params(a, q);
    ref_cpu::decode_attention(p, ref.data());
    const int group = sh.hq / sh.hkv;
    for (size_t b = 0; b < ctx.size(); ++b)
      for (int h = 0; h < sh.hq; ++h) {
        const int64_t row = int64_t(b) * sh.hq + h;
        const auto o = model_decode_head(a, &q[size_t(row * sh.d)], &a.block_table[b * a.bt_stride], ctx[b],
                                         h / group, p.softmax_scale);
        std::copy(o.begin(), o.end(), model.begin() + row * sh.d);
      }
    const double tol = test::decode_tol(sh.dt);
    const auto per_seq = test::sequence_errors(model, ref, test::decode_rows(ctx.size()), int64_t(sh.hq) * sh.d);
    std::printf("decode d=%d %s hq=%d hkv=%d: modelled batch error %.2e, worst sequence %.2e (bound %.1e)\n", sh.d,
                kv_dtype_name(sh.dt), sh.hq, sh.hkv, test::normalized_error(model, ref),
                *std::max_element(per_seq.begin(), per_seq.end()), tol);
    for (size_t s = 0; s < ctx.size(); ++s) {
      EXPECT_LT(per_seq[s], tol / 2) << "decode d " << sh.d << " " << kv_dtype_name(sh.dt) << " hq " << sh.hq
                                     << " hkv " << sh.hkv << " sequence " << s << " context " << ctx[s];
      worst_ratio = std::max(worst_ratio, per_seq[s] / tol);
    }
  }
  std::printf("decode: worst modelled sequence error / bound = %.2f\n", worst_ratio);
}

// Prefill: the kernel's tiles of 128 keys, a KV4 / FP8 prefix dequantized in fp32 then rounded to fp16, FP16
// prefix and new K/V exact, P rounded to fp16, fp16 output. The head_dim 64 shape of each prefix mode (the larger
// score errors: scale 1/8); the reference costs seconds per batch here.
TEST(AttentionRoundingModel, PrefillBoundsHaveRoomOnTheGpuTestInputs) {
  for (const test::PrefillShape& sh : test::prefill_shapes()) {
    if (sh.d != 64 || sh.page != 16) continue;
    const std::vector<int32_t>& ctx = test::prefill_contexts();
    const std::vector<int32_t> prefix = test::prefill_prefixes(sh.mode);
    PagedBatch pb = test::make_paged_batch({sh.page, sh.hkv, sh.d, test::prefill_dtype(sh.mode)}, sh.hq, ctx,
                                           test::prefill_seed(sh));
    const test::Packed pk = test::pack(pb, prefix);
    const kernels::PrefillParams p = test::prefill_params(pb, pk, &prefix);
    std::vector<float> ref(pk.q.size()), model(pk.q.size());
    ref_cpu::prefill_attention(p, ref.data());
    const int d = sh.d, group = sh.hq / sh.hkv;
    const float sl2 = p.softmax_scale * 1.4426950408889634f;
    for (size_t b = 0; b < ctx.size(); ++b) {
      const int32_t* pages = &pb.block_table[b * pb.bt_stride];
      const int32_t n_new = pk.cu[b + 1] - pk.cu[b];
      for (int kvh = 0; kvh < sh.hkv; ++kvh) {
        // Keys and values of the sequence as the kernel stages them (fp16).
        const int32_t kv_len = prefix[b] + n_new;
        std::vector<float> K(size_t(kv_len) * d), V(size_t(kv_len) * d), row(static_cast<size_t>(d));
        for (int32_t j = 0; j < kv_len; ++j) {
          if (j < prefix[b]) {
            ref_cpu::read_cache_token(pb.k_pool.data(), pb.layout, pages, j, kvh, row.data());
            for (int i = 0; i < d; ++i) K[size_t(j) * d + i] = r16(row[size_t(i)]);
            ref_cpu::read_cache_token(pb.v_pool.data(), pb.layout, pages, j, kvh, row.data());
            for (int i = 0; i < d; ++i) V[size_t(j) * d + i] = r16(row[size_t(i)]);
          } else {
            const int64_t t = pk.cu[b] + (j - prefix[b]);
            for (int i = 0; i < d; ++i) {
              K[size_t(j) * d + i] = fp16_to_float(pk.k[size_t((t * sh.hkv + kvh) * d + i)]);
              V[size_t(j) * d + i] = fp16_to_float(pk.v[size_t((t * sh.hkv + kvh) * d + i)]);
            }
          }
        }
        for (int32_t r = 0; r < n_new; ++r)
          for (int h = kvh * group; h < (kvh + 1) * group; ++h) {
            const int64_t qrow = (pk.cu[b] + r) * sh.hq + h;
            const int32_t visible = prefix[b] + r + 1;
            std::vector<float> o(size_t(d), 0.0f);
            float m = -INFINITY, lsum = 0;
            for (int32_t t0 = 0; t0 < visible; t0 += 128) {
              const int32_t t1 = std::min(visible, t0 + 128);
              std::vector<float> s;
              float tmax = -INFINITY;
              for (int32_t j = t0; j < t1; ++j) {
                float acc = 0;
                for (int i = 0; i < d; ++i) acc += fp16_to_float(pk.q[size_t(qrow * d + i)]) * K[size_t(j) * d + i];
                s.push_back(acc * sl2);
                tmax = std::max(tmax, acc * sl2);
              }
              const float mnew = std::max(m, tmax), c = std::exp2(m - mnew);
              m = mnew;
              lsum *= c;
              for (float& x : o) x *= c;
              for (int32_t j = t0; j < t1; ++j) {
                const float pj = std::exp2(s[size_t(j - t0)] - mnew);
                lsum += pj;
                const float p16 = r16(pj);
                for (int i = 0; i < d; ++i) o[size_t(i)] += p16 * V[size_t(j) * d + i];
              }
            }
            for (int i = 0; i < d; ++i) model[size_t(qrow * d + i)] = r16(o[size_t(i)] / lsum);
          }
      }
    }
    const double tol = test::prefill_tol(sh.mode);
    const auto per_seq =
        test::sequence_errors(model, ref, std::vector<int64_t>(pk.cu.begin(), pk.cu.end()), int64_t(sh.hq) * d);
    double worst = 0;
    for (size_t s = 0; s < ctx.size(); ++s) {
      EXPECT_LT(per_seq[s], tol / 2) << "prefill mode " << sh.mode << " sequence " << s;
      worst = std::max(worst, per_seq[s]);
    }
    std::printf("prefill d %d mode %d: batch %.2e, worst modelled sequence %.2e (bound %.1e)\n", d, sh.mode,
                test::normalized_error(model, ref), worst, tol);
  }
}

}  // namespace
}  // namespace qs
