// safetensors reader/writer: round trips, the real sharded qs-llama-tiny checkpoint, and every kind of bad
// file giving an error that names the problem.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "common/test_util.h"
#include "io/safetensors.h"

namespace qs::io {
namespace {
namespace fs = std::filesystem;
using ::testing::HasSubstr;

class TempDir {
 public:
  TempDir() {
    path_ = fs::temp_directory_path() / ("qs_io_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter_++));
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string file(const std::string& n) const { return (path_ / n).string(); }

 private:
  fs::path path_;
  static inline int counter_ = 0;
};

using ::qs::test::error_of;

void write_raw(const std::string& path, const std::string& header, size_t data_bytes) {
  std::ofstream out(path, std::ios::binary);
  const uint64_t n = header.size();
  out.write(reinterpret_cast<const char*>(&n), 8);
  out << header;
  out << std::string(data_bytes, '\x01');
}

TEST(Safetensors, WriteReadRoundTripAllDtypes) {
  TempDir d;
  SafetensorsWriter w;
  Tensor a(DType::F32, {3, 5});
  for (int i = 0; i < 15; ++i) a.data<float>()[i] = 0.5f * i - 3;
  Tensor b(DType::BF16, {7});
  for (int i = 0; i < 7; ++i) b.data<uint16_t>()[i] = float_to_bf16(float(i) / 3);
  Tensor c(DType::I8, {2, 2, 3});
  for (int i = 0; i < 12; ++i) c.data<int8_t>()[i] = int8_t(i * 11 - 60);
  Tensor e(DType::I64, {});  // scalar
  e.data<int64_t>()[0] = -123456789012345;
  w.add("a", a);
  w.add("b.weight", b);
  w.add("c", c);
  w.add("scalar", e);
  w.add("empty", Tensor(DType::U8, {0, 4}));
  w.set_metadata("format", "pt");
  w.write(d.file("x.safetensors"));

  auto f = SafetensorsFile::open(d.file("x.safetensors"));
  ASSERT_EQ(f->tensors().size(), 5u);
  EXPECT_EQ(f->metadata().at("format"), "pt");
  Tensor a2 = f->get("a");
  EXPECT_EQ(a2.desc(), "F32[3, 5]");
  EXPECT_EQ(std::memcmp(a2.raw(), a.raw(), a.nbytes()), 0);
  EXPECT_EQ(std::memcmp(f->get("b.weight").raw(), b.raw(), b.nbytes()), 0);
  EXPECT_EQ(std::memcmp(f->get("c").raw(), c.raw(), c.nbytes()), 0);
  EXPECT_EQ(f->get("scalar").data<int64_t>()[0], -123456789012345);
  EXPECT_EQ(f->get("empty").numel(), 0);
  // A tensor at an offset not aligned to its dtype (the I64 at data byte 60 + 14 + 12 = 86) comes back as an
  // aligned copy: reading it in place would be undefined behaviour (UBSan found it).
  EXPECT_EQ(reinterpret_cast<uintptr_t>(f->get("scalar").raw()) % 8, 0u);
  // Data is 8-byte aligned after the header.
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a2.raw()) % 8, 0u);
  EXPECT_THAT(error_of([&] { w.add("a", a); }), HasSubstr("added twice"));
}

TEST(Safetensors, TensorOutlivesFileHandle) {
  TempDir d;
  SafetensorsWriter w;
  Tensor a(DType::F32, {4});
  a.data<float>()[3] = 42.0f;
  w.add("a", a);
  w.write(d.file("x.safetensors"));
  Tensor kept;
  { kept = SafetensorsFile::open(d.file("x.safetensors"))->get("a"); }
  EXPECT_EQ(kept.data<float>()[3], 42.0f);
}

TEST(Safetensors, ShardedRealCheckpoint) {
  QS_REQUIRE_DATA("models/qs-llama-tiny");
  TensorStore s = TensorStore::open(test::data_path("models/qs-llama-tiny"));
  EXPECT_EQ(s.names().size(), 4u * 9 + 2);
  const TensorInfo& ti = s.info("model.layers.3.mlp.down_proj.weight");
  EXPECT_EQ(ti.dtype, DType::BF16);
  EXPECT_EQ(ti.shape, (Shape{512, 1536}));
  Tensor emb = s.get("model.embed_tokens.weight").to_f32();
  EXPECT_EQ(emb.shape(), (Shape{8192, 512}));
  double sum2 = 0;
  for (int64_t i = 0; i < emb.numel(); ++i) sum2 += double(emb.data<float>()[i]) * emb.data<float>()[i];
  EXPECT_GT(sum2, 0.0);
  EXPECT_THAT(error_of([&] { s.get("lm_head.weight"); }), HasSubstr("'lm_head.weight' not found"));
}

TEST(Safetensors, TruncatedFile) {
  QS_REQUIRE_DATA("models/qs-llama-tiny");
  TempDir d;
  const std::string src = test::data_path("models/qs-llama-tiny/model-00002-of-00002.safetensors");
  std::ifstream in(src, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), {});
  {
    std::ofstream out(d.file("t.safetensors"), std::ios::binary);
    out.write(bytes.data(), std::streamsize(bytes.size() / 2));
  }
  EXPECT_THAT(error_of([&] { SafetensorsFile::open(d.file("t.safetensors")); }), HasSubstr("beyond the end of the file"));
  {
    std::ofstream out(d.file("h.safetensors"), std::ios::binary);
    out.write(bytes.data(), 100);  // cut inside the header
  }
  EXPECT_THAT(error_of([&] { SafetensorsFile::open(d.file("h.safetensors")); }), HasSubstr("truncated"));
  {
    std::ofstream out(d.file("e.safetensors"), std::ios::binary);
    out.write(bytes.data(), 5);
  }
  EXPECT_THAT(error_of([&] { SafetensorsFile::open(d.file("e.safetensors")); }), HasSubstr("no header"));
}

TEST(Safetensors, CorruptHeaders) {
  TempDir d;
  struct Case {
    std::string header;
    size_t data;
    std::string expect;
  } cases[] = {
      {"{not json", 0, "not valid JSON"},
      {"[1,2]", 0, "not a JSON object"},
      {R"({"w":{"dtype":"F8_E9","shape":[2],"data_offsets":[0,2]}})", 2, "unsupported dtype 'F8_E9'"},
      {R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}})", 24, "needs 24 bytes but data_offsets span 20"},
      {R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8, "reversed"},
      {R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8, "bad dimension"},
      {R"({"w":{"dtype":"F32","shape":[2]}})", 8, "lacks dtype, shape or data_offsets"},
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
       12, "overlap"},
      {R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8, "beyond the end"},
  };
  for (const auto& c : cases) {
    write_raw(d.file("c.safetensors"), c.header, c.data);
    const std::string err = error_of([&] { SafetensorsFile::open(d.file("c.safetensors")); });
    EXPECT_THAT(err, HasSubstr(c.expect)) << c.header;
    EXPECT_THAT(err, HasSubstr("c.safetensors")) << "error must name the file";
  }
  // Huge header length
  {
    std::ofstream out(d.file("big.safetensors"), std::ios::binary);
    const uint64_t n = 1ull << 40;
    out.write(reinterpret_cast<const char*>(&n), 8);
    out << "{}";
  }
  EXPECT_THAT(error_of([&] { SafetensorsFile::open(d.file("big.safetensors")); }),
              HasSubstr("header length field is over 100 MB"));
}

TEST(Safetensors, MissingShardAndIndexMismatch) {
  QS_REQUIRE_DATA("models/qs-llama-tiny");
  TempDir d;
  const std::string src = test::data_path("models/qs-llama-tiny");
  fs::copy_file(src + "/model.safetensors.index.json", d.file("model.safetensors.index.json"));
  fs::copy_file(src + "/model-00001-of-00002.safetensors", d.file("model-00001-of-00002.safetensors"));
  EXPECT_THAT(error_of([&] { TensorStore::open(d.file("")); }), HasSubstr("missing shard"));
  // A shard that lacks a tensor the index promises.
  SafetensorsWriter w;
  w.add("model.norm.weight", Tensor(DType::BF16, {512}));
  w.write(d.file("model-00002-of-00002.safetensors"));
  EXPECT_THAT(error_of([&] { TensorStore::open(d.file("")); }), HasSubstr("absent from shard"));
  EXPECT_THAT(error_of([&] { TensorStore::open(d.file("nope")); }), HasSubstr("does not exist"));
}

TEST(Safetensors, WriterIsAtomicAndReportsBadDirectory) {
  TempDir d;
  SafetensorsWriter w;
  w.add("a", Tensor(DType::F32, {2}));
  EXPECT_THAT(error_of([&] { w.write(d.file("no/such/dir/x.safetensors")); }), HasSubstr("does not exist"));
  w.write(d.file("x.safetensors"));
  for (const auto& e : fs::directory_iterator(d.file("")))
    EXPECT_EQ(e.path().filename().string().find(".tmp."), std::string::npos) << "temporary file left behind";
}

}  // namespace
}  // namespace qs::io
