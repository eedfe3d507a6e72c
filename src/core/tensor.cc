// Host tensor implementation (see tensor.h).
#include "core/tensor.h"

#include <cstdlib>
#include <cstring>
#include <sstream>

namespace qs {

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << "]";
  return os.str();
}

Tensor::Tensor(DType dtype, Shape shape) : dtype_(dtype), shape_(std::move(shape)) {
  for (int64_t d : shape_) QS_CHECK(d >= 0) << "negative dimension in " << shape_str(shape_);
  const size_t bytes = nbytes();
  // 64-byte aligned, zero-filled storage.
  void* p = std::aligned_alloc(64, (bytes + 63) / 64 * 64 + 64);
  QS_CHECK(p != nullptr) << "out of memory allocating " << bytes << " bytes for " << desc();
  std::memset(p, 0, bytes);
  storage_ = std::shared_ptr<const void>(p, [](const void* q) { std::free(const_cast<void*>(q)); });
  data_ = p;
}

Tensor Tensor::view(DType dtype, Shape shape, const void* data, std::shared_ptr<const void> keepalive) {
  Tensor t;
  t.dtype_ = dtype;
  t.shape_ = std::move(shape);
  t.data_ = data;
  t.storage_ = std::move(keepalive);
  return t;
}

Tensor Tensor::from_floats(Shape shape, const float* src) {
  Tensor t(DType::F32, std::move(shape));
  std::memcpy(t.raw_mut(), src, t.nbytes());
  return t;
}

int64_t Tensor::dim(int i) const {
  const int n = ndim();
  if (i < 0) i += n;
  QS_CHECK(i >= 0 && i < n) << "dimension " << i << " out of range for " << desc();
  return shape_[size_t(i)];
}

std::string Tensor::desc() const { return std::string(dtype_name(dtype_)) + shape_str(shape_); }

Tensor Tensor::clone() const {
  Tensor t(dtype_, shape_);
  if (nbytes()) std::memcpy(t.raw_mut(), data_, nbytes());
  return t;
}

Tensor Tensor::to_f32() const {
  Tensor out(DType::F32, shape_);
  float* o = out.data<float>();
  const int64_t n = numel();
  switch (dtype_) {
    case DType::F32: std::memcpy(o, data_, nbytes()); break;
    case DType::F16: { auto* s = static_cast<const uint16_t*>(data_); for (int64_t i = 0; i < n; ++i) o[i] = fp16_to_float(s[i]); break; }
    case DType::BF16: { auto* s = static_cast<const uint16_t*>(data_); for (int64_t i = 0; i < n; ++i) o[i] = bf16_to_float(s[i]); break; }
    case DType::F64: { auto* s = static_cast<const double*>(data_); for (int64_t i = 0; i < n; ++i) o[i] = float(s[i]); break; }
    case DType::I8: { auto* s = static_cast<const int8_t*>(data_); for (int64_t i = 0; i < n; ++i) o[i] = s[i]; break; }
    case DType::U8: case DType::BOOL: { auto* s = static_cast<const uint8_t*>(data_); for (int64_t i = 0; i < n; ++i) o[i] = s[i]; break; }
    case DType::I16: { auto* s = static_cast<const int16_t*>(data_); for (int64_t i = 0; i < n; ++i) o[i] = s[i]; break; }
    case DType::I32: { auto* s = static_cast<const int32_t*>(data_); for (int64_t i = 0; i < n; ++i) o[i] = float(s[i]); break; }
    case DType::I64: { auto* s = static_cast<const int64_t*>(data_); for (int64_t i = 0; i < n; ++i) o[i] = float(s[i]); break; }
  }
  return out;
}

Tensor Tensor::reshape(Shape shape) const {
  QS_CHECK(shape_numel(shape) == numel()) << "cannot reshape " << desc() << " to " << shape_str(shape);
  Tensor t = *this;
  t.shape_ = std::move(shape);
  return t;
}

}  // namespace qs
