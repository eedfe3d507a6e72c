// Random-weight checkpoints in real shapes (see random_checkpoint.h).
#include "io/random_checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "core/file_io.h"
#include "core/thread_pool.h"
#include "io/model_config.h"

namespace qs::io {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kSub = 1 << 16;     // elements per RNG stream (the unit of determinism)
constexpr int64_t kChunk = 1 << 22;   // elements generated and written per step (8 MB in BF16)

uint64_t splitmix(uint64_t& s) {
  uint64_t z = (s += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// Elements [i0, i1) of tensor t (i0 a multiple of kSub) as dtype into out.
void generate(uint64_t seed, uint64_t t, const RandomTensorSpec& spec, DType dt, double stddev, int64_t i0,
              int64_t i1, uint8_t* out) {
  const size_t es = dtype_size(dt);
  // Irwin-Hall of four 16-bit uniforms: mean 4 * 32767.5, standard deviation 65536 / sqrt(3).
  const double mul = stddev * std::sqrt(3.0) / 65536.0, mean = 4.0 * 32767.5;
  parallel_for((i1 - i0 + kSub - 1) / kSub, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t s0 = i0 + b * kSub, s1 = std::min(i1, s0 + kSub);
      uint64_t st = seed * 0x2545F4914F6CDD1DULL ^ (t << 40) ^ uint64_t(s0 / kSub);
      splitmix(st);
      for (int64_t i = s0; i < s1; ++i) {
        float x = 1.0f;
        if (!spec.ones) {
          const uint64_t r = splitmix(st);
          const double sum = double(r & 0xFFFF) + double((r >> 16) & 0xFFFF) + double((r >> 32) & 0xFFFF) +
                             double(r >> 48);
          x = float((sum - mean) * mul);
        }
        uint8_t* p = out + size_t(i - i0) * es;
        if (dt == DType::BF16) {
          const uint16_t h = float_to_bf16(x);
          std::memcpy(p, &h, 2);
        } else if (dt == DType::F16) {
          const uint16_t h = float_to_fp16(x);
          std::memcpy(p, &h, 2);
        } else {
          std::memcpy(p, &x, 4);
        }
      }
    }
  });
}

std::string shard_name(int i, int n) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "model-%05d-of-%05d.safetensors", i + 1, n);
  return buf;
}

}  // namespace

int64_t RandomTensorSpec::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::vector<RandomTensorSpec> llama_family_tensors(const nlohmann::json& config) {
  const ModelConfig c = parse_model_config(config);
  const int64_t h = c.hidden_size, q = c.q_size(), kv = c.kv_size(), f = c.intermediate_size, v = c.vocab_size;
  QS_CHECK(h > 0 && q > 0 && kv > 0 && f > 0 && v > 0 && c.num_layers > 0)
      << "random checkpoint: the config has a zero dimension (hidden " << h << ", heads x head_dim " << q
      << ", intermediate " << f << ", vocab " << v << ", layers " << c.num_layers << ")";
  std::vector<RandomTensorSpec> t;
  t.push_back({"model.embed_tokens.weight", {v, h}, false});
  for (int i = 0; i < c.num_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    t.push_back({p + "input_layernorm.weight", {h}, true});
    t.push_back({p + "self_attn.q_proj.weight", {q, h}, false});
    t.push_back({p + "self_attn.k_proj.weight", {kv, h}, false});
    t.push_back({p + "self_attn.v_proj.weight", {kv, h}, false});
    if (c.attention_bias) {
      t.push_back({p + "self_attn.q_proj.bias", {q}, false});
      t.push_back({p + "self_attn.k_proj.bias", {kv}, false});
      t.push_back({p + "self_attn.v_proj.bias", {kv}, false});
    }
    t.push_back({p + "self_attn.o_proj.weight", {h, q}, false});
    t.push_back({p + "post_attention_layernorm.weight", {h}, true});
    t.push_back({p + "mlp.gate_proj.weight", {f, h}, false});
    t.push_back({p + "mlp.up_proj.weight", {f, h}, false});
    t.push_back({p + "mlp.down_proj.weight", {h, f}, false});
  }
  t.push_back({"model.norm.weight", {h}, true});
  if (!c.tie_word_embeddings) t.push_back({"lm_head.weight", {v, h}, false});
  return t;
}

RandomCheckpointStats write_random_checkpoint(const RandomCheckpointOptions& opt) {
  QS_CHECK(opt.dtype == DType::BF16 || opt.dtype == DType::F16 || opt.dtype == DType::F32)
      << "random checkpoint: dtype must be BF16, F16 or F32, not " << dtype_name(opt.dtype);
  QS_CHECK(opt.stddev > 0 && std::isfinite(opt.stddev)) << "random checkpoint: stddev must be positive";
  QS_CHECK(opt.max_shard_bytes > 0) << "random checkpoint: max shard size must be positive";
  const std::vector<RandomTensorSpec> specs = llama_family_tensors(opt.config);
  const size_t es = dtype_size(opt.dtype);

  // Plan the shards: tensors in order, a new shard when the next tensor would overflow the current one.
  std::vector<std::vector<size_t>> shards(1);
  int64_t cur = 0;
  RandomCheckpointStats st;
  for (size_t i = 0; i < specs.size(); ++i) {
    const int64_t b = specs[i].numel() * int64_t(es);
    if (cur > 0 && cur + b > opt.max_shard_bytes) {
      shards.emplace_back();
      cur = 0;
    }
    shards.back().push_back(i);
    cur += b;
    st.parameters += specs[i].numel();
    st.bytes += b;
  }
  st.shards = int(shards.size());

  const fs::path dir(opt.out);
  QS_CHECK(!opt.out.empty()) << "random checkpoint: no output directory";
  if (fs::exists(dir)) {
    QS_CHECK(fs::is_directory(dir) && fs::is_empty(dir))
        << "--out " << opt.out << " exists and is not an empty directory";
  } else {
    std::error_code ec;
    fs::create_directories(dir, ec);
    QS_CHECK(!ec) << "cannot create " << opt.out << ": " << ec.message();
  }
  {
    std::ofstream f(dir / "config.json");
    f << opt.config.dump(2) << "\n";
    QS_CHECK(f.good()) << "cannot write " << (dir / "config.json").string();
  }

  nlohmann::ordered_json weight_map;
  std::vector<uint8_t> buf(size_t(kChunk) * es);
  for (int s = 0; s < st.shards; ++s) {
    const std::string name = shard_name(s, st.shards);
    nlohmann::ordered_json h;
    h["__metadata__"] = {{"format", "pt"}, {"qserve_random", "seed " + std::to_string(opt.seed)}};
    int64_t off = 0;
    for (size_t i : shards[size_t(s)]) {
      const int64_t b = specs[i].numel() * int64_t(es);
      h[specs[i].name] = {{"dtype", dtype_name(opt.dtype)}, {"shape", specs[i].shape}, {"data_offsets", {off, off + b}}};
      off += b;
      weight_map[specs[i].name] = name;
    }
    std::string header = h.dump();
    header.append((8 - header.size() % 8) % 8, ' ');
    const uint64_t hlen = header.size();
    const std::string path = (dir / name).string();
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    QS_CHECK(fd >= 0) << "cannot write " << path << ": " << std::strerror(errno);
    auto write_all = [&](const void* p, size_t n) { write_fd_all(fd, p, n, path, path); };
    write_all(&hlen, 8);
    write_all(header.data(), header.size());
    for (size_t i : shards[size_t(s)]) {
      const int64_t n = specs[i].numel();
      for (int64_t i0 = 0; i0 < n; i0 += kChunk) {
        const int64_t i1 = std::min(n, i0 + kChunk);
        generate(opt.seed, uint64_t(i), specs[i], opt.dtype, opt.stddev, i0, i1, buf.data());
        write_all(buf.data(), size_t(i1 - i0) * es);
      }
    }
    if (::close(fd) != 0) {
      ::unlink(path.c_str());
      QS_FAIL() << "writing " << path << " failed: " << std::strerror(errno);
    }
  }
  nlohmann::ordered_json index;
  index["metadata"] = {{"total_size", st.bytes}};
  index["weight_map"] = weight_map;
  std::ofstream f(dir / "model.safetensors.index.json");
  f << index.dump(2) << "\n";
  QS_CHECK(f.good()) << "cannot write the shard index in " << opt.out;
  return st;
}

}  // namespace qs::io
