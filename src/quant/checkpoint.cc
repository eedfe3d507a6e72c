// Quantized checkpoint writer (see checkpoint.h).
#include "quant/checkpoint.h"

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "core/file_io.h"

namespace qs::quant {

namespace fs = std::filesystem;

namespace {

Tensor to_f16(const Tensor& t, const std::string& name) {
  if (t.dtype() == DType::F16) return t;
  QS_CHECK(t.dtype() == DType::F32 || t.dtype() == DType::BF16)
      << "tensor '" << name << "': cannot store " << t.desc() << " as F16";
  const Tensor f = t.to_f32();
  Tensor out(DType::F16, t.shape());
  const float* src = f.data<float>();
  uint16_t* dst = out.data<uint16_t>();
  for (int64_t i = 0; i < t.numel(); ++i) {
    dst[i] = float_to_fp16(src[i]);
    QS_CHECK(std::isfinite(fp16_to_float(dst[i])) || !std::isfinite(src[i]))
        << "tensor '" << name << "': value " << src[i] << " at " << i << " overflows FP16";
  }
  return out;
}

void write_text_atomically(const fs::path& path, const std::string& text) {
  const std::string tmp = path.string() + ".tmp." + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    QS_CHECK(out.good()) << "cannot write " << path.string();
    out << text;
    out.flush();
    QS_CHECK(out.good()) << "writing " << path.string() << " failed";
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) {
    fs::remove(tmp);
    QS_FAIL() << "cannot move " << tmp << " to " << path.string() << ": " << ec.message();
  }
}

}  // namespace

// ------------------------------------------------------------------------------------------------- writer

QuantizedCheckpointWriter::QuantizedCheckpointWriter(model::CheckpointMeta meta) : meta_(std::move(meta)) {
  meta_.format_version = model::kCheckpointFormatVersion;
  meta_.group_size = meta_.variant == WeightFormat::kW4A8G128 ? fmt4::kGroupSize : 0;
  if (meta_.variant != WeightFormat::kW4A8G128) meta_.protective_range = 0;
  else if (meta_.protective_range == 0) meta_.protective_range = kProtectiveRange;
  QS_CHECK(meta_.kv_bits == 4 || meta_.kv_bits == 16) << "kv_bits " << meta_.kv_bits << " is not 4 or 16";
  meta_.linears.clear();
}

void QuantizedCheckpointWriter::begin_linear(const std::string& name, WeightFormat v, int64_t n, int64_t k) {
  QS_CHECK(v == meta_.variant) << "linear '" << name << "' is " << weight_format_name(v) << " but the checkpoint is "
                               << weight_format_name(meta_.variant);
  QS_CHECK(!meta_.linears.count(name)) << "linear '" << name << "' added twice";
  meta_.linears[name] = {n, k};
}

void QuantizedCheckpointWriter::add_bias(const std::string& name, const Tensor& bias, int64_t n) {
  if (!bias.defined()) return;
  QS_CHECK(bias.ndim() == 1 && bias.dim(0) == n) << "linear '" << name << "': bias " << bias.desc()
                                                 << " does not match " << n << " outputs";
  writer_.add(name + ".bias", to_f16(bias, name + ".bias"));
}

void QuantizedCheckpointWriter::add_linear(const std::string& name, const W4PerChannelWeight& w, const Tensor& bias) {
  const int64_t n = w.qweight.dim(0), k = w.qweight.dim(1) * 2;
  begin_linear(name, WeightFormat::kW4A8PerChannel, n, k);
  writer_.add(name + ".qweight", w.qweight);
  writer_.add(name + ".scale", w.scale);
  writer_.add(name + ".szero", w.szero);
  add_bias(name, bias, n);
}

void QuantizedCheckpointWriter::add_linear(const std::string& name, const W4G128Weight& w, const Tensor& bias) {
  const int64_t n = w.qweight.dim(0), k = w.qweight.dim(1) * 2;
  begin_linear(name, WeightFormat::kW4A8G128, n, k);
  QS_CHECK(w.protective_range == meta_.protective_range)
      << "linear '" << name << "' was quantized with protective range " << w.protective_range
      << " but the checkpoint records " << meta_.protective_range;
  writer_.add(name + ".qweight", w.qweight);
  writer_.add(name + ".s1", w.s1);
  writer_.add(name + ".s2", w.s2);
  writer_.add(name + ".zn", w.zn);
  add_bias(name, bias, n);
}

void QuantizedCheckpointWriter::add_linear(const std::string& name, const Int8ChannelWeight& w, const Tensor& bias) {
  const int64_t n = w.qweight.dim(0), k = w.qweight.dim(1);
  begin_linear(name, WeightFormat::kW8A8, n, k);
  writer_.add(name + ".qweight", w.qweight);
  writer_.add(name + ".scale", w.scale);
  add_bias(name, bias, n);
}

void QuantizedCheckpointWriter::add_fp16(const std::string& name, const Tensor& t) {
  writer_.add(name, to_f16(t, name));
}

void QuantizedCheckpointWriter::write(const std::string& dir) const {
  QS_CHECK(!dir.empty()) << "no output directory given";
  std::error_code ec;
  fs::create_directories(dir, ec);
  QS_CHECK(!ec && fs::is_directory(dir)) << "cannot create output directory " << dir << ": "
                                         << (ec ? ec.message() : "not a directory");
  QS_CHECK(::access(dir.c_str(), W_OK) == 0) << "output directory " << dir << " is not writable";
  io::SafetensorsWriter w = writer_;  // the metadata goes in last, with the final list of linears
  w.set_metadata(model::kCheckpointMetadataKey, model::checkpoint_meta_to_json(meta_).dump());
  w.write((fs::path(dir) / model::kCheckpointFileName).string());
  write_text_atomically(fs::path(dir) / "config.json", meta_.hf_config.dump(2) + "\n");
}

Tensor dequantize(const model::StoredLinear& l) {
  switch (l.variant) {
    case WeightFormat::kW4A8PerChannel: return dequantize(W4PerChannelWeight{l.qweight, l.scale, l.szero, Tensor()});
    case WeightFormat::kW4A8G128: return dequantize(W4G128Weight{l.qweight, l.s1, l.s2, l.zn, Tensor(), 0});
    case WeightFormat::kW8A8: return dequantize(Int8ChannelWeight{l.qweight, l.scale, Tensor()});
  }
  return Tensor();
}

}  // namespace qs::quant
