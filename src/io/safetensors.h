// safetensors files: a strict, zero-copy reader (mmap) for single files and sharded checkpoints
// (model.safetensors.index.json), and a writer. Every validation failure throws qs::Error naming the file and,
// where there is one, the tensor: header length, JSON, dtype, shape x dtype == byte span, spans in bounds and
// non-overlapping, missing shards, tensors listed in the index but absent from their shard.
#pragma once

#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace qs::io {

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  Shape shape;
  size_t offset = 0;  // byte offset of the data inside the file (after the header)
  size_t nbytes = 0;
  std::string file;   // path of the file that holds it
};

// One safetensors file, memory-mapped read-only. Tensors returned by get() view the mapping and keep it alive.
class SafetensorsFile {
 public:
  static std::shared_ptr<SafetensorsFile> open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* find(const std::string& name) const;  // nullptr if absent
  Tensor get(const std::string& name) const;               // throws if absent
  // The "__metadata__" string map (empty if none).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  SafetensorsFile() = default;
  std::string path_;
  const uint8_t* base_ = nullptr;  // mapping start
  size_t size_ = 0;
  size_t data_start_ = 0;          // 8 + header length
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
  std::weak_ptr<SafetensorsFile> self_;
};

// A checkpoint directory's tensors: `model.safetensors`, or the shards named by
// `model.safetensors.index.json`, or a single given .safetensors file.
class TensorStore {
 public:
  // `path` is a directory or a .safetensors file.
  static TensorStore open(const std::string& path);

  bool has(const std::string& name) const { return where_.count(name) != 0; }
  const TensorInfo& info(const std::string& name) const;  // throws if absent
  Tensor get(const std::string& name) const;               // throws "tensor 'x' not found in <dir>"
  std::vector<std::string> names() const;                  // sorted
  // Metadata of the first file (quantized checkpoints keep theirs in one file).
  const std::map<std::string, std::string>& metadata() const;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, size_t> where_;  // tensor name -> index in files_
};

// Builds a safetensors file in memory order of insertion and writes it atomically (a temporary file in the
// same directory, fsync, rename), so an interrupted write never leaves a complete-looking file.
class SafetensorsWriter {
 public:
  void add(const std::string& name, const Tensor& t);  // copies the data; duplicate names throw
  void set_metadata(const std::string& key, const std::string& value);
  void write(const std::string& path) const;
  size_t size() const { return entries_.size(); }

 private:
  struct Entry {
    std::string name;
    Tensor tensor;
  };
  std::vector<Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace qs::io
