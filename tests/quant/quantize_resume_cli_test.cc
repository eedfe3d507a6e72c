// `qserve quantize` resume through the built binary (skipped when it was not built): a run stopped after layer 2
// (QSERVE_QUANTIZE_STOP_AFTER_LAYER, the test hook) exits 1, publishes nothing at DIR and keeps
// DIR.qserve-partial; the same command then resumes at layer 3 and writes a checkpoint whose every tensor equals
// an uninterrupted run's (and the metadata too); the resume folder is gone afterwards. Other settings refuse the
// state (or discard it with --force); the streaming path equals --in-memory (the whole-model reference path).
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "common/test_util.h"
#include "io/safetensors.h"
#include "quant/checkpoint.h"

namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;
constexpr const char* kModel = "models/qs-llama-tiny";

std::string qserve_binary() { return (fs::read_symlink("/proc/self/exe").parent_path() / "qserve").string(); }

struct CliResult {
  int rc;
  std::string out;
};
CliResult run(const std::string& env, const std::string& args, const char* sub = "quantize") {
  const std::string cmd = env + " " + qserve_binary() + " " + sub + " " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  const int st = pclose(p);
  return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, out};
}

// Every tensor and the qserve metadata of two checkpoints, compared exactly (the source path aside).
void expect_same_checkpoint(const fs::path& a, const fs::path& b) {
  const auto ta = qs::io::TensorStore::open(a.string()), tb = qs::io::TensorStore::open(b.string());
  ASSERT_EQ(ta.names(), tb.names());
  for (const auto& n : ta.names()) {
    const qs::Tensor x = ta.get(n), y = tb.get(n);
    ASSERT_EQ(x.shape(), y.shape()) << n;
    EXPECT_EQ(std::memcmp(x.raw(), y.raw(), size_t(x.numel()) * qs::dtype_size(x.dtype())), 0) << n;
  }
  auto ma = qs::model::QuantizedCheckpoint::open(a.string()).meta();
  auto mb = qs::model::QuantizedCheckpoint::open(b.string()).meta();
  EXPECT_EQ(ma.qoq, mb.qoq);
  EXPECT_EQ(ma.hf_config, mb.hf_config);
}

class QuantizeResumeCli : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(qserve_binary())) GTEST_SKIP() << "qserve binary not built: " << qserve_binary();
    QS_REQUIRE_DATA(kModel);
    model_ = qs::test::data_path(kModel);
    tmp_ = fs::temp_directory_path() / ("qoq_resume_test_" + std::to_string(::getpid()));
    fs::remove_all(tmp_);
    fs::create_directories(tmp_);
  }
  void TearDown() override {
    if (!tmp_.empty()) fs::remove_all(tmp_);
  }
  std::string args(const fs::path& out, const std::string& extra = "") const {
    return "--model " + model_ + " --out " + out.string() +
           " --variant g128 --calib-samples 2 --calib-len 64 --sample-rows 24 --smooth-attn-windows 2"
           " --smooth-attn-queries 16 " + extra;
  }
  std::string model_;
  fs::path tmp_;
};

TEST_F(QuantizeResumeCli, StoppedRunResumesToTheSameCheckpoint) {
  const fs::path full = tmp_ / "full", res = tmp_ / "resumed";
  CliResult r = run("", args(full, "--quiet"));
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_FALSE(fs::exists(tmp_ / "full.qserve-partial"));  // removed once DIR is published
  EXPECT_THAT(r.out, HasSubstr("peak host memory"));

  r = run("QSERVE_QUANTIZE_STOP_AFTER_LAYER=2", args(res));
  EXPECT_EQ(r.rc, 1);
  EXPECT_THAT(r.out, HasSubstr("stopped after layer 2"));
  EXPECT_THAT(r.out, HasSubstr("layer 2/4 done"));  // the per-layer progress line (stderr is not a terminal)
  EXPECT_FALSE(fs::exists(res));
  EXPECT_TRUE(fs::exists(tmp_ / "resumed.qserve-partial" / "state.json"));

  // Other settings: refused, and the state is kept.
  r = run("", args(res, "--no-reorder"));
  EXPECT_EQ(r.rc, 1);
  EXPECT_THAT(r.out, HasSubstr("cannot be resumed"));
  EXPECT_THAT(r.out, HasSubstr("--force"));
  EXPECT_TRUE(fs::exists(tmp_ / "resumed.qserve-partial" / "layer-1.safetensors"));

  r = run("", args(res));
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr("resuming at layer 3/4"));
  EXPECT_THAT(r.out, Not(HasSubstr("layer 1/4 done")));
  EXPECT_FALSE(fs::exists(tmp_ / "resumed.qserve-partial"));
  expect_same_checkpoint(full, res);

  // The reference whole-model path gives the same checkpoint.
  const fs::path mem = tmp_ / "in-memory";
  r = run("", args(mem, "--quiet --in-memory"));
  ASSERT_EQ(r.rc, 0) << r.out;
  expect_same_checkpoint(full, mem);
}

TEST_F(QuantizeResumeCli, ForceDiscardsAMismatchedState) {
  const fs::path out = tmp_ / "o";
  CliResult r = run("QSERVE_QUANTIZE_STOP_AFTER_LAYER=1", args(out, "--quiet"));
  ASSERT_EQ(r.rc, 1) << r.out;
  r = run("", args(out, "--quiet --no-gptq --force"));
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_THAT(r.out, Not(HasSubstr("resuming")));
  EXPECT_FALSE(fs::exists(tmp_ / "o.qserve-partial"));
  EXPECT_FALSE(qs::model::QuantizedCheckpoint::open(out.string()).meta().qoq["gptq"].get<bool>());
  r = run("QSERVE_QUANTIZE_STOP_AFTER_LAYER=x", args(tmp_ / "p", "--quiet"));
  EXPECT_EQ(r.rc, 1);
  EXPECT_THAT(r.out, HasSubstr("QSERVE_QUANTIZE_STOP_AFTER_LAYER=x is not a layer count"));
}

TEST_F(QuantizeResumeCli, MakeRandomWithFewerLayersQuantizes) {
  // make-random --layers 2 of the tiny shape, then the streaming quantizer on it: 14 linears, a loadable checkpoint.
  const fs::path rnd = tmp_ / "rnd", q = tmp_ / "rnd-q";
  CliResult r = run("", "--config " + (fs::path(model_) / "config.json").string() + " --layers 2 --out " + rnd.string(),
                    "make-random");
  ASSERT_EQ(r.rc, 0) << r.out;
  r = run("", "--model " + rnd.string() + " --out " + q.string() +
                  " --variant g128 --calib-samples 2 --calib-len 64 --sample-rows 16 --quiet");
  ASSERT_EQ(r.rc, 0) << r.out;
  const auto ck = qs::model::QuantizedCheckpoint::open(q.string());
  EXPECT_EQ(ck.linear_names().size(), 14u);
  EXPECT_EQ(ck.meta().hf_config["num_hidden_layers"].get<int>(), 2);
}

}  // namespace
