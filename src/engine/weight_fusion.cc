// Host-side weight fusion (weight_fusion.h).
#include "engine/weight_fusion.h"

#include <cstring>
#include <string>

#include "core/dtype.h"
#include "core/error.h"

namespace qs::engine {
namespace {

// Concatenates tensors along dim 0 (same dtype and trailing shape). `fill_missing` > 0: parts without the tensor
// (undefined) contribute `fill_missing` rows of zeros each (used for optional biases, given per-part row counts).
Tensor concat_rows(const std::vector<const Tensor*>& ts, const std::vector<int64_t>& rows, const char* what) {
  const Tensor* first = nullptr;
  for (const Tensor* t : ts)
    if (t && t->raw()) {
      first = t;
      break;
    }
  QS_CHECK(first != nullptr) << "fuse: no part has " << what;
  Shape shape = first->shape();
  const size_t row_bytes = first->nbytes() / size_t(std::max<int64_t>(1, first->dim(0)));
  int64_t total = 0;
  for (size_t i = 0; i < ts.size(); ++i) {
    const Tensor* t = ts[i];
    if (t && t->raw()) {
      QS_CHECK(t->dtype() == first->dtype() && t->ndim() == first->ndim())
          << "fuse: " << what << " parts differ in dtype or rank (" << t->desc() << " vs " << first->desc() << ")";
      for (int d = 1; d < t->ndim(); ++d)
        QS_CHECK(t->dim(d) == first->dim(d)) << "fuse: " << what << " parts differ in shape (" << t->desc()
                                             << " vs " << first->desc() << ")";
      QS_CHECK(t->dim(0) == rows[i]) << "fuse: " << what << " part " << i << " has " << t->dim(0) << " rows, expected "
                                     << rows[i];
    }
    total += rows[i];
  }
  shape[0] = total;
  Tensor out(first->dtype(), shape);
  uint8_t* dst = static_cast<uint8_t*>(out.raw_mut());
  for (size_t i = 0; i < ts.size(); ++i) {
    const size_t bytes = size_t(rows[i]) * row_bytes;
    if (ts[i] && ts[i]->raw())
      std::memcpy(dst, ts[i]->raw(), bytes);
    else
      std::memset(dst, 0, bytes);
    dst += bytes;
  }
  return out;
}

}  // namespace

model::QuantizedWeights fuse_quantized_rows(const std::vector<const model::QuantizedWeights*>& parts) {
  QS_CHECK(!parts.empty()) << "fuse: no parts";
  const auto v = parts[0]->variant;
  std::vector<int64_t> rows;
  std::vector<const Tensor*> q, s, sz, s2, zn, b;
  bool any_bias = false;
  for (const auto* p : parts) {
    QS_CHECK(p->variant == v) << "fuse: parts of different weight variants";
    QS_CHECK(p->qweight.dim(1) == parts[0]->qweight.dim(1))
        << "fuse: parts of different input sizes (" << p->qweight.desc() << " vs " << parts[0]->qweight.desc() << ")";
    rows.push_back(p->qweight.dim(0));
    q.push_back(&p->qweight);
    s.push_back(&p->scale);
    sz.push_back(&p->szero);
    s2.push_back(&p->s2);
    zn.push_back(&p->zn);
    b.push_back(&p->bias);
    any_bias = any_bias || p->bias.raw() != nullptr;
  }
  model::QuantizedWeights f;
  f.variant = v;
  f.qweight = concat_rows(q, rows, "qweight");
  f.scale = concat_rows(s, rows, "scale");
  if (v == WeightFormat::kW4A8PerChannel) f.szero = concat_rows(sz, rows, "szero");
  if (v == WeightFormat::kW4A8G128) {
    f.s2 = concat_rows(s2, rows, "s2");
    f.zn = concat_rows(zn, rows, "zn");
  }
  if (any_bias) f.bias = concat_rows(b, rows, "bias");
  return f;
}

model::QuantizedWeights interleave_quantized_rows(const model::QuantizedWeights& a, const model::QuantizedWeights& b) {
  QS_CHECK(a.qweight.dim(0) == b.qweight.dim(0))
      << "fuse: interleaved parts need the same number of rows (" << a.qweight.desc() << " vs " << b.qweight.desc()
      << ")";
  model::QuantizedWeights f = fuse_quantized_rows({&a, &b});
  const int64_t n = a.qweight.dim(0);
  // Row j of the concatenation's first half -> row 2j, row j of the second half -> row 2j + 1.
  auto interleave = [n](Tensor& t) {
    if (!t.raw()) return;
    const size_t row = t.nbytes() / size_t(2 * n);
    Tensor out(t.dtype(), t.shape());
    const uint8_t* src = static_cast<const uint8_t*>(t.raw());
    uint8_t* dst = static_cast<uint8_t*>(out.raw_mut());
    for (int64_t j = 0; j < n; ++j) {
      std::memcpy(dst + size_t(2 * j) * row, src + size_t(j) * row, row);
      std::memcpy(dst + size_t(2 * j + 1) * row, src + size_t(n + j) * row, row);
    }
    t = std::move(out);
  };
  for (Tensor* t : {&f.qweight, &f.scale, &f.szero, &f.s2, &f.zn, &f.bias}) interleave(*t);
  return f;
}

std::vector<uint16_t> to_fp16_bits(const Tensor& t) {
  std::vector<uint16_t> out(size_t(t.numel()));
  if (t.dtype() == DType::F16) {
    std::memcpy(out.data(), t.raw(), out.size() * 2);
    return out;
  }
  const Tensor f = t.dtype() == DType::F32 ? t : t.to_f32();
  const float* p = f.data<float>();
  for (size_t i = 0; i < out.size(); ++i) out[i] = float_to_fp16(p[i]);
  return out;
}

std::vector<uint16_t> fuse_fp16_rows(const std::vector<const Tensor*>& parts) {
  QS_CHECK(!parts.empty()) << "fuse: no parts";
  std::vector<uint16_t> out;
  for (const Tensor* t : parts) {
    QS_CHECK(t->ndim() == 2 && t->dim(1) == parts[0]->dim(1))
        << "fuse: FP parts must be 2-D with one input size (" << t->desc() << " vs " << parts[0]->desc() << ")";
    const auto b = to_fp16_bits(*t);
    out.insert(out.end(), b.begin(), b.end());
  }
  return out;
}

const Tensor& fp_linear_weight(const model::Linear& l, const char* what, const Tensor** bias) {
  static const Tensor kNone;
  if (const auto* f = dynamic_cast<const model::FpLinear*>(&l)) {
    if (bias) *bias = f->has_bias() ? &f->bias() : &kNone;
    return f->weight();
  }
  if (const auto* h = dynamic_cast<const model::Fp16Linear*>(&l)) {
    if (bias) *bias = &kNone;
    return h->weight();
  }
  QS_FAIL() << "engine: " << what << " is a " << l.kind() << " linear; an FP (fp32/fp16) one is needed here";
  static const Tensor unreachable;
  return unreachable;
}

}  // namespace qs::engine
