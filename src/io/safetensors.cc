// safetensors reader (mmap, strict validation) and atomic writer. Format: 8-byte little-endian header length,
// a JSON header {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}, then the data.
#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/file_io.h"

namespace qs::io {
namespace fs = std::filesystem;

namespace {

constexpr uint64_t kMaxHeader = 100ull << 20;  // 100 MB, as the reference implementation

std::string errno_str() { return std::strerror(errno); }

}  // namespace

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  std::shared_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  const int fd = open_regular_file(path, "safetensors file");  // a FIFO or a directory: an error, never a hang
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    QS_FAIL() << "cannot stat " << path << ": " << errno_str();
  }
  f->size_ = size_t(st.st_size);
  if (f->size_ < 8) {
    ::close(fd);
    QS_FAIL() << "safetensors file " << path << " is truncated: " << f->size_ << " bytes, no header";
  }
  void* m = ::mmap(nullptr, f->size_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  QS_CHECK(m != MAP_FAILED) << "cannot mmap " << path << ": " << errno_str();
  f->base_ = static_cast<const uint8_t*>(m);

  uint64_t hlen = 0;
  std::memcpy(&hlen, f->base_, 8);  // little-endian host (x86-64, aarch64)
  // The messages never print the length field itself: those are the file's first bytes (not ours to echo).
  QS_CHECK(hlen <= kMaxHeader) << "safetensors file " << path
                               << ": the header length field is over 100 MB (not a safetensors file, or corrupt)";
  QS_CHECK(8 + hlen <= f->size_) << "safetensors file " << path
                                 << " is truncated: the header length field points past the end of the file ("
                                 << f->size_ << " bytes)";
  f->data_start_ = 8 + size_t(hlen);
  nlohmann::json h;
  try {
    h = nlohmann::json::parse(f->base_ + 8, f->base_ + 8 + hlen);
  } catch (const nlohmann::json::exception& e) {
    QS_FAIL() << "safetensors file " << path << ": header is not valid JSON (" << json_error_text(e) << ")";
  }
  QS_CHECK(h.is_object()) << "safetensors file " << path << ": header is not a JSON object";
  const size_t data_size = f->size_ - f->data_start_;
  for (auto it = h.begin(); it != h.end(); ++it) {
    const std::string& name = it.key();
    const auto& v = it.value();
    if (name == "__metadata__") {
      QS_CHECK(v.is_object()) << path << ": __metadata__ is not an object";
      for (auto m2 = v.begin(); m2 != v.end(); ++m2) {
        QS_CHECK(m2.value().is_string()) << path << ": __metadata__ value '" << m2.key() << "' is not a string";
        f->metadata_[m2.key()] = m2.value().get<std::string>();
      }
      continue;
    }
    auto where = [&] { return path + ": tensor '" + name + "'"; };
    QS_CHECK(v.is_object() && v.contains("dtype") && v.contains("shape") && v.contains("data_offsets"))
        << where() << " lacks dtype, shape or data_offsets";
    QS_CHECK(v["dtype"].is_string()) << where() << ": dtype is not a string";
    TensorInfo ti;
    ti.name = name;
    ti.file = path;
    const std::string dt = v["dtype"].get<std::string>();
    QS_CHECK(parse_dtype(dt, &ti.dtype)) << where() << " has unsupported dtype '" << dt << "'";
    QS_CHECK(v["shape"].is_array()) << where() << ": shape is not an array";
    for (const auto& d : v["shape"]) {
      QS_CHECK(d.is_number_integer() && d.get<int64_t>() >= 0) << where() << ": bad dimension " << d.dump();
      ti.shape.push_back(d.get<int64_t>());
    }
    const auto& off = v["data_offsets"];
    QS_CHECK(off.is_array() && off.size() == 2 && off[0].is_number_unsigned() && off[1].is_number_unsigned())
        << where() << ": data_offsets must be two non-negative integers";
    const uint64_t b = off[0].get<uint64_t>(), e = off[1].get<uint64_t>();
    QS_CHECK(b <= e) << where() << ": data_offsets [" << b << ", " << e << "] are reversed";
    QS_CHECK(e <= data_size) << where() << ": data [" << b << ", " << e << ") lies beyond the end of the file ("
                             << data_size << " data bytes; truncated file?)";
    const uint64_t expect = uint64_t(shape_numel(ti.shape)) * dtype_size(ti.dtype);
    QS_CHECK(e - b == expect) << where() << ": " << dt << shape_str(ti.shape) << " needs " << expect
                              << " bytes but data_offsets span " << (e - b);
    ti.offset = size_t(b);
    ti.nbytes = size_t(e - b);
    f->tensors_.push_back(std::move(ti));
  }
  // Spans must not overlap.
  std::vector<const TensorInfo*> by_off;
  for (const auto& t : f->tensors_) by_off.push_back(&t);
  std::sort(by_off.begin(), by_off.end(), [](auto* a, auto* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < by_off.size(); ++i)
    QS_CHECK(by_off[i]->offset >= by_off[i - 1]->offset + by_off[i - 1]->nbytes)
        << path << ": tensors '" << by_off[i - 1]->name << "' and '" << by_off[i]->name << "' overlap";
  for (size_t i = 0; i < f->tensors_.size(); ++i) f->index_[f->tensors_[i].name] = i;
  f->self_ = f;
  return f;
}

SafetensorsFile::~SafetensorsFile() {
  if (base_) ::munmap(const_cast<uint8_t*>(base_), size_);
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

Tensor SafetensorsFile::get(const std::string& name) const {
  const TensorInfo* ti = find(name);
  QS_CHECK(ti) << "tensor '" << name << "' not found in " << path_;
  const uint8_t* p = base_ + data_start_ + ti->offset;
  // The format does not align tensors (a BF16[7] before an I64 leaves it at an odd offset): reading through a
  // misaligned pointer is undefined behaviour, so such a tensor is copied instead of viewed.
  if (reinterpret_cast<uintptr_t>(p) % dtype_size(ti->dtype) != 0) {
    Tensor t(ti->dtype, ti->shape);
    if (ti->nbytes) std::memcpy(t.raw_mut(), p, ti->nbytes);
    return t;
  }
  return Tensor::view(ti->dtype, ti->shape, p, self_.lock());
}

// ---------------------------------------------------------------------------------------------------------

TensorStore TensorStore::open(const std::string& path) {
  TensorStore s;
  s.path_ = path;
  QS_CHECK(fs::exists(path)) << "checkpoint path " << path << " does not exist";
  std::vector<std::string> files;
  if (fs::is_directory(path)) {
    const fs::path dir(path);
    const fs::path index = dir / "model.safetensors.index.json";
    if (fs::exists(fs::symlink_status(index))) {
      nlohmann::json j;
      const std::string text = read_file_checked(index.string(), "shard index", kMaxHeader);
      try {
        j = nlohmann::json::parse(text);
      } catch (const nlohmann::json::exception& e) {
        QS_FAIL() << "shard index " << index.string() << " is not valid JSON (" << json_error_text(e) << ")";
      }
      QS_CHECK(j.contains("weight_map") && j["weight_map"].is_object())
          << "shard index " << index.string() << " has no weight_map";
      std::map<std::string, std::string> wm;
      for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
        QS_CHECK(it.value().is_string()) << index.string() << ": weight_map entry '" << it.key() << "' is not a string";
        const std::string shard = it.value().get<std::string>();
        // Confined to the checkpoint folder: a file name in it, after lexical normalization ("./x" is "x"); absolute
        // paths, '..' and subfolders are refused (an index is untrusted input; Hugging Face indexes are flat).
        const fs::path sp(shard);
        bool inside = !shard.empty() && !sp.is_absolute() && shard.find('\0') == std::string::npos;
        for (const auto& part : sp) inside = inside && part != ".." && !part.is_absolute();
        const fs::path name = sp.lexically_normal();
        inside = inside && !name.has_parent_path() && name.has_filename() && name != "." && name != "..";
        QS_CHECK(inside) << index.string() << ": weight_map entry '" << it.key() << "' names the shard '" << shard
                         << "', which is not a file inside the checkpoint folder (absolute paths, '..' and subfolders "
                            "are refused)";
        wm[it.key()] = name.string();
      }
      std::map<std::string, size_t> file_idx;
      for (const auto& [name, shard] : wm) {
        if (file_idx.count(shard)) continue;
        const fs::path sp = dir / shard;
        QS_CHECK(fs::exists(fs::symlink_status(sp))) << "missing shard " << sp.string() << " (listed in "
                                                     << index.string() << " for tensor '" << name << "')";
        file_idx[shard] = s.files_.size();
        s.files_.push_back(SafetensorsFile::open(sp.string()));
      }
      for (const auto& [name, shard] : wm) {
        const size_t fi = file_idx[shard];
        QS_CHECK(s.files_[fi]->find(name)) << "tensor '" << name << "' is listed in " << index.string()
                                           << " but absent from shard " << s.files_[fi]->path();
        s.where_[name] = fi;
      }
      return s;
    }
    const fs::path single = dir / "model.safetensors";
    if (fs::exists(fs::symlink_status(single))) {
      files.push_back(single.string());
    } else {
      for (const auto& e : fs::directory_iterator(dir))
        if (e.path().extension() == ".safetensors") files.push_back(e.path().string());
      std::sort(files.begin(), files.end());
      QS_CHECK(!files.empty()) << "no .safetensors files in " << path;
    }
  } else {
    files.push_back(path);
  }
  for (const auto& f : files) {
    s.files_.push_back(SafetensorsFile::open(f));
    const size_t fi = s.files_.size() - 1;
    for (const auto& t : s.files_.back()->tensors()) {
      QS_CHECK(!s.where_.count(t.name)) << "tensor '" << t.name << "' appears in two files of " << path;
      s.where_[t.name] = fi;
    }
  }
  return s;
}

const TensorInfo& TensorStore::info(const std::string& name) const {
  auto it = where_.find(name);
  QS_CHECK(it != where_.end()) << "tensor '" << name << "' not found in " << path_;
  return *files_[it->second]->find(name);
}

Tensor TensorStore::get(const std::string& name) const {
  auto it = where_.find(name);
  QS_CHECK(it != where_.end()) << "tensor '" << name << "' not found in " << path_;
  return files_[it->second]->get(name);
}

std::vector<std::string> TensorStore::names() const {
  std::vector<std::string> n;
  for (const auto& [k, v] : where_) n.push_back(k);
  return n;
}

const std::map<std::string, std::string>& TensorStore::metadata() const {
  static const std::map<std::string, std::string> kEmpty;
  return files_.empty() ? kEmpty : files_[0]->metadata();
}

// ---------------------------------------------------------------------------------------------------------

void SafetensorsWriter::add(const std::string& name, const Tensor& t) {
  QS_CHECK(!name.empty() && name != "__metadata__") << "invalid tensor name '" << name << "'";
  for (const auto& e : entries_) QS_CHECK(e.name != name) << "tensor '" << name << "' added twice";
  entries_.push_back({name, t.clone()});
}

void SafetensorsWriter::set_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }

void SafetensorsWriter::write(const std::string& path) const {
  nlohmann::ordered_json h;
  if (!metadata_.empty()) h["__metadata__"] = metadata_;
  size_t off = 0;
  for (const auto& e : entries_) {
    h[e.name] = {{"dtype", dtype_name(e.tensor.dtype())},
                 {"shape", e.tensor.shape()},
                 {"data_offsets", {off, off + e.tensor.nbytes()}}};
    off += e.tensor.nbytes();
  }
  std::string header = h.dump();
  header.append((8 - header.size() % 8) % 8, ' ');  // align data to 8 bytes, as the reference writer does
  const uint64_t hlen = header.size();

  const fs::path target(path);
  const fs::path dir = target.has_parent_path() ? target.parent_path() : fs::path(".");
  QS_CHECK(fs::is_directory(dir)) << "cannot write " << path << ": directory " << dir.string() << " does not exist";
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  QS_CHECK(fd >= 0) << "cannot write " << path << ": " << errno_str();
  auto write_all = [&](const void* p, size_t n) { write_fd_all(fd, p, n, tmp, path); };
  write_all(&hlen, 8);
  write_all(header.data(), header.size());
  for (const auto& e : entries_) write_all(e.tensor.raw(), e.tensor.nbytes());
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    ::unlink(tmp.c_str());
    QS_FAIL() << "writing " << path << " failed: " << errno_str();
  }
  QS_CHECK(::rename(tmp.c_str(), path.c_str()) == 0) << "cannot move " << tmp << " to " << path << ": " << errno_str();
}

}  // namespace qs::io
