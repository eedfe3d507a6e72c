// The reference KV cache of one sequence: contiguous per layer, [position, kv_head, head_dim] float rows, grown
// on demand (the paged cache is the CUDA runtime's business). Two modes:
//  * kFp32: keys (after RoPE) and values stored as computed;
//  * kKv4:  the exact W4A8KV4 reference path: every K and V vector of one token and one KV head (head_dim values,
//           after RoPE) is quantized with qs::fmt4::quantize_kv4_group and immediately dequantized with
//           qs::fmt4::dequantize_kv4; attention reads the dequantized values. The packed nibbles and FP16
//           scale/zero are kept too, so a device cache can be compared with this one bit for bit.
// By default attention reads everything from the cache, also the tokens of the current chunk, so in KV4 mode
// every key and value the model sees is quantized (fake-quantized evaluation, and the engine's decode steps);
// SeqInput::fp_self_kv (model.h) instead lets a prefill chunk see its own K/V unquantized, as the engine's
// prefill kernel does.
// Length protocol: Model::forward writes each layer's K/V at [length, length + n) and then advances length.
#pragma once

#include <cstdint>
#include <vector>

#include "io/model_config.h"
#include "formats/formats.h"

namespace qs::model {

enum class KvMode { kFp32, kKv4 };
const char* kv_mode_name(KvMode m);

class KvCache {
 public:
  KvCache(int num_layers, int num_kv_heads, int head_dim, KvMode mode = KvMode::kFp32);
  explicit KvCache(const io::ModelConfig& c, KvMode mode = KvMode::kFp32)
      : KvCache(c.num_layers, c.num_kv_heads, c.head_dim, mode) {}

  KvMode mode() const { return mode_; }
  int num_layers() const { return int(layers_.size()); }
  int num_kv_heads() const { return kv_heads_; }
  int head_dim() const { return head_dim_; }
  int64_t length() const { return length_; }  // positions 0 .. length-1 are valid in every layer
  int64_t capacity() const { return capacity_; }

  // Ensures room for `n` positions in every layer (existing contents kept).
  void reserve(int64_t n);
  // Stores k, v [n, num_kv_heads, head_dim] of `layer` at positions [pos, pos + n) (quantized in KV4 mode),
  // growing the storage as needed. pos must be <= length() (no holes).
  void write(int layer, int64_t pos, const float* k, const float* v, int64_t n);
  // KV4 mode only: stores already-quantized K/V of `layer` at positions [pos, pos + n): packed nibbles
  // k4, v4 [n, num_kv_heads, head_dim / 2] and FP16 params kp, vp [n, num_kv_heads]. Keeps exactly what write()
  // would have kept for the float vectors these codes came from (codes, params, dequantized values), so a cache
  // rebuilt from a paged pool's bytes equals the cache that filled the pool. Same position rules as write().
  void write_packed(int layer, int64_t pos, const uint8_t* k4, const fmt4::Kv4Params* kp, const uint8_t* v4,
                    const fmt4::Kv4Params* vp, int64_t n);
  // Sets the valid length (advance after all layers were written, or truncate to drop positions).
  void set_length(int64_t n);
  void clear() { set_length(0); }

  // [capacity, num_kv_heads, head_dim]; rows below length() are valid (dequantized values in KV4 mode).
  const float* k(int layer) const { return layers_.at(size_t(layer)).k.data(); }
  const float* v(int layer) const { return layers_.at(size_t(layer)).v.data(); }
  // KV4 mode only: packed nibbles [capacity, num_kv_heads, head_dim / 2] (formats.h canonical layout) and the
  // FP16 scale/zero per [position, kv_head].
  const uint8_t* k4(int layer) const { return layers_.at(size_t(layer)).k4.data(); }
  const uint8_t* v4(int layer) const { return layers_.at(size_t(layer)).v4.data(); }
  const fmt4::Kv4Params* k4_params(int layer) const { return layers_.at(size_t(layer)).kp.data(); }
  const fmt4::Kv4Params* v4_params(int layer) const { return layers_.at(size_t(layer)).vp.data(); }

 private:
  struct Layer {
    std::vector<float> k, v;
    std::vector<uint8_t> k4, v4;
    std::vector<fmt4::Kv4Params> kp, vp;
  };
  KvMode mode_;
  int kv_heads_, head_dim_;
  int64_t length_ = 0, capacity_ = 0;
  std::vector<Layer> layers_;
};

}  // namespace qs::model
