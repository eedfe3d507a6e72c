// qs::Tensor: a dense, row-major, host tensor (shape + dtype + bytes). It either owns its storage or views
// memory kept alive by someone else (an mmap'd safetensors file). Copies share storage (like a shared_ptr);
// use clone() for a deep copy. The reference backend computes on F32 tensors; other dtypes hold checkpoint
// data and quantized weights.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"

namespace qs {

using Shape = std::vector<int64_t>;

int64_t shape_numel(const Shape& s);
std::string shape_str(const Shape& s);  // "[2, 3]"

class Tensor {
 public:
  Tensor() = default;
  // Allocates a zero-filled tensor.
  Tensor(DType dtype, Shape shape);
  // A view of `data` (not copied); `keepalive` owns the memory.
  static Tensor view(DType dtype, Shape shape, const void* data, std::shared_ptr<const void> keepalive);
  // Copies `n` floats into a new F32 tensor of the given shape.
  static Tensor from_floats(Shape shape, const float* src);

  bool defined() const { return data_ != nullptr || numel() == 0; }
  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  int ndim() const { return int(shape_.size()); }
  int64_t dim(int i) const;  // negative i counts from the end
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype_); }
  std::string desc() const;  // "BF16[512, 1536]"

  template <typename T>
  T* data() {
    QS_CHECK(sizeof(T) == dtype_size(dtype_)) << "tensor element type mismatch for " << desc();
    return static_cast<T*>(const_cast<void*>(data_));
  }
  template <typename T>
  const T* data() const {
    QS_CHECK(sizeof(T) == dtype_size(dtype_)) << "tensor element type mismatch for " << desc();
    return static_cast<const T*>(data_);
  }
  const void* raw() const { return data_; }
  void* raw_mut() { return const_cast<void*>(data_); }

  Tensor clone() const;                 // deep copy (owning)
  Tensor to_f32() const;                // F32/F16/BF16/integer types -> new F32 tensor
  Tensor reshape(Shape shape) const;    // same storage, new shape (numel must match)

 private:
  DType dtype_ = DType::F32;
  Shape shape_;
  const void* data_ = nullptr;
  std::shared_ptr<const void> storage_;
};

}  // namespace qs
