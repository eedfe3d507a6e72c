// Streaming, resumable QoQ (see streaming.h).
#include "quant/qoq/streaming.h"

#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <future>
#include <set>
#include <sstream>

#include "core/error.h"
#include "core/thread_pool.h"
#include "io/safetensors.h"
#include "quant/cuda/layer_runner_cuda.h"
#include "quant/qoq/model_view.h"

namespace qs::quant::qoq {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

constexpr int kStateVersion = 1;

std::string layer_prefix(int i) { return "model.layers." + std::to_string(i) + "."; }

// ---- reading the source checkpoint ------------------------------------------------------------------------

// Drops the resident pages wholly inside [p, p + n) (rounded inward to pages): after a layer is converted to F32 its
// pages of the read-only file mapping are not needed again, and left resident they would be counted in the
// process's RSS (0.44 GB per Llama-3-8B layer in BF16) although the kernel could reclaim them. For a file mapping
// the pages are re-read on a later access; for a tensor the reader returned as a private copy (misaligned data),
// only pages of that copy, which is no longer used, are affected.
void release_pages(const void* p, size_t n) {
  const uintptr_t page = uintptr_t(::sysconf(_SC_PAGESIZE));
  const uintptr_t b = (uintptr_t(p) + page - 1) / page * page, e = (uintptr_t(p) + n) / page * page;
  if (e > b) ::madvise(reinterpret_cast<void*>(b), e - b, MADV_DONTNEED);
}

// As model/llama.cc's loader: name, shape, dtype and finiteness checked; converted to F32.
Tensor load_f32(const io::TensorStore& store, const std::string& name, const Shape& expected) {
  QS_CHECK(store.has(name)) << "checkpoint " << store.path() << ": tensor '" << name << "' is missing (expected shape "
                            << shape_str(expected) << ")";
  const io::TensorInfo& info = store.info(name);
  QS_CHECK(info.shape == expected) << "checkpoint " << store.path() << ": tensor '" << name << "' has shape "
                                   << shape_str(info.shape) << ", expected " << shape_str(expected);
  QS_CHECK(info.dtype == DType::F32 || info.dtype == DType::F16 || info.dtype == DType::BF16)
      << "checkpoint " << store.path() << ": tensor '" << name << "' has dtype " << dtype_name(info.dtype)
      << ", expected F32, F16 or BF16";
  const Tensor src = store.get(name);
  // Tensor::to_f32 and model::check_finite, split over threads (every conversion is exact, so the values are the
  // same); the serial check only runs to word the error when something is not finite.
  Tensor t(DType::F32, src.shape());
  const int64_t n = src.numel();
  float* o = t.data<float>();
  std::atomic<bool> bad{false};
  parallel_for(n, [&](int64_t b, int64_t e) {
    const auto* h = static_cast<const uint16_t*>(src.raw());
    if (src.dtype() == DType::F32)
      std::memcpy(o + b, static_cast<const float*>(src.raw()) + b, size_t(e - b) * 4);
    else if (src.dtype() == DType::BF16)
      for (int64_t i = b; i < e; ++i) o[i] = bf16_to_float(h[i]);
    else
      for (int64_t i = b; i < e; ++i) o[i] = fp16_to_float(h[i]);
    for (int64_t i = b; i < e; ++i)
      if (!std::isfinite(o[i])) bad = true;
  }, 1 << 16);
  if (bad) model::check_finite(t, name, store.path());
  release_pages(src.raw(), size_t(n) * dtype_size(src.dtype()));
  return t;
}

// The tensor names a Llama-family checkpoint of this config may hold (everything else is an error, as in
// Model::load), checked against the store before any work.
void check_names(const io::TensorStore& store, const io::ModelConfig& c) {
  std::set<std::string> used{"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"};
  for (int i = 0; i < c.num_layers; ++i) {
    const std::string p = layer_prefix(i);
    used.insert(p + "input_layernorm.weight");
    used.insert(p + "post_attention_layernorm.weight");
    for (const char* n : model::kLayerLinearNames) used.insert(p + n + ".weight");
    if (c.attention_bias)
      for (const char* n : {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"}) used.insert(p + n + ".bias");
  }
  for (const std::string& n : store.names()) {
    const size_t dot = n.rfind('.');
    if (dot != std::string::npos && n.substr(dot) == ".qweight")
      QS_FAIL() << "checkpoint " << store.path() << " holds quantized tensors ('" << n
                << "'): quantize the FP (Hugging Face) model, not a quantized one";
  }
  model::check_all_used(store.names(), used, c.num_layers, store.path());
}

model::DecoderLayer load_layer(const io::TensorStore& store, const io::ModelConfig& c, int i,
                               const backends::Backend& be) {
  const int64_t H = c.hidden_size, I = c.intermediate_size, Q = c.q_size(), KV = c.kv_size();
  const std::string p = layer_prefix(i);
  auto linear = [&](const char* n, int64_t in, int64_t out, bool bias) {
    Tensor w = load_f32(store, p + n + ".weight", {out, in});
    Tensor b = bias ? load_f32(store, p + n + ".bias", {out}) : Tensor();
    return std::make_unique<model::FpLinear>(std::move(w), std::move(b), be);
  };
  model::DecoderLayer l;
  l.input_norm = load_f32(store, p + "input_layernorm.weight", {H});
  l.post_attn_norm = load_f32(store, p + "post_attention_layernorm.weight", {H});
  l.q_proj = linear("self_attn.q_proj", H, Q, c.attention_bias);
  l.k_proj = linear("self_attn.k_proj", H, KV, c.attention_bias);
  l.v_proj = linear("self_attn.v_proj", H, KV, c.attention_bias);
  l.o_proj = linear("self_attn.o_proj", Q, H, false);
  l.gate_proj = linear("mlp.gate_proj", H, I, false);
  l.up_proj = linear("mlp.up_proj", H, I, false);
  l.down_proj = linear("mlp.down_proj", I, H, false);
  return l;
}

// ---- identity of the inputs (what a resume must match) ----------------------------------------------------

uint64_t fnv1a(const void* data, size_t n, uint64_t h = 1469598103934665603ULL) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ULL;
  return h;
}
std::string hex(uint64_t v) {
  char b[17];
  std::snprintf(b, sizeof b, "%016llx", (unsigned long long)v);
  return b;
}

// config.json's bytes and every safetensors file's name and size (a changed checkpoint changes them; hashing
// 16 GB of weights on every start would cost minutes).
nlohmann::json source_identity(const std::string& dir) {
  nlohmann::json j;
  std::ifstream f(fs::path(dir) / "config.json", std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string cfg = ss.str();
  j["config_fnv1a"] = hex(fnv1a(cfg.data(), cfg.size()));
  nlohmann::json files = nlohmann::json::object();
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string n = e.path().filename().string();
    if (e.is_regular_file() && (n.ends_with(".safetensors") || n.ends_with(".safetensors.index.json")))
      files[n] = int64_t(e.file_size());
  }
  j["files"] = files;
  j["path"] = fs::absolute(dir).lexically_normal().string();
  return j;
}

nlohmann::json calib_identity(const CalibrationSet& calib) {
  uint64_t h = 1469598103934665603ULL;
  for (const auto& w : calib.windows) h = fnv1a(w.data(), w.size() * sizeof(int32_t), h);
  return {{"windows", calib.windows.size()},
          {"len", calib.windows.empty() ? 0 : calib.windows[0].size()},
          {"text_tokens", calib.text_tokens},
          {"tokens_fnv1a", hex(h)}};
}

// ---- resume state ----------------------------------------------------------------------------------------

nlohmann::json report_to_json(const LayerReport& r) {
  nlohmann::json j;
  j["layer"] = r.layer;
  j["down"] = {r.down_alpha, r.down_beta};
  j["attn_alpha"] = r.attn_alpha;
  j["attn_err"] = {r.attn_err, r.attn_err_half, r.attn_err_none, r.attn_err_k, r.attn_err_v, r.attn_err_v_smooth};
  j["seconds"] = r.seconds;
  nlohmann::json lin = nlohmann::json::array();
  for (const auto& l : r.linears) lin.push_back({l.name, l.n, l.k, l.rel_error, l.mean_clip});
  j["linears"] = lin;
  return j;
}

LayerReport report_from_json(const nlohmann::json& j) {
  LayerReport r;
  r.layer = j.at("layer").get<int>();
  r.down_alpha = j.at("down")[0].get<float>();
  r.down_beta = j.at("down")[1].get<float>();
  r.attn_alpha = j.at("attn_alpha").get<std::vector<float>>();
  const auto& e = j.at("attn_err");
  r.attn_err = e[0], r.attn_err_half = e[1], r.attn_err_none = e[2];
  r.attn_err_k = e[3], r.attn_err_v = e[4], r.attn_err_v_smooth = e[5];
  r.seconds = j.at("seconds").get<double>();
  for (const auto& l : j.at("linears"))
    r.linears.push_back({l[0].get<std::string>(), l[1].get<int64_t>(), l[2].get<int64_t>(), l[3].get<double>(),
                         l[4].get<float>()});
  return r;
}

void write_atomic(const fs::path& path, const void* data, size_t n) {
  const fs::path tmp = path.string() + ".tmp-" + std::to_string(::getpid());
  FILE* f = std::fopen(tmp.c_str(), "wb");
  QS_CHECK(f != nullptr) << "cannot write " << tmp.string();
  const bool ok = std::fwrite(data, 1, n, f) == n && std::fflush(f) == 0 && ::fsync(fileno(f)) == 0;
  const bool closed = std::fclose(f) == 0;
  if (!ok || !closed) {
    std::error_code ec;
    fs::remove(tmp, ec);
    QS_FAIL() << "cannot write " << tmp.string() << " (disk full?)";
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  QS_CHECK(!ec) << "cannot move " << tmp.string() << " to " << path.string() << ": " << ec.message();
}

fs::path hidden_file(const fs::path& dir, int layers_done) {
  return dir / ("hidden-" + std::to_string(layers_done) + ".bin");
}
fs::path layer_file(const fs::path& dir, int layer) {
  return dir / ("layer-" + std::to_string(layer) + ".safetensors");
}

// The quantized linears of one layer, its norms and biases, as one safetensors file.
void save_layer(const fs::path& dir, int li, const std::map<std::string, QuantizedLinear>& linears,
                const FpTensors& fp) {
  io::SafetensorsWriter w;
  const std::string p = layer_prefix(li);
  for (const char* n : model::kLayerLinearNames) {
    const std::string name = p + n;
    std::visit(
        [&](const auto& q) {
          using T = std::decay_t<decltype(q)>;
          w.add(name + ".qweight", q.qweight);
          if constexpr (std::is_same_v<T, W4G128Weight>) {
            w.add(name + ".s1", q.s1);
            w.add(name + ".s2", q.s2);
            w.add(name + ".zn", q.zn);
          } else {
            w.add(name + ".scale", q.scale);
            w.add(name + ".szero", q.szero);
          }
        },
        linears.at(name));
    const auto b = fp.biases.find(name);
    if (b != fp.biases.end()) w.add(name + ".bias", b->second);
  }
  w.add(p + "input_layernorm.weight", fp.input_norm[size_t(li)]);
  w.add(p + "post_attention_layernorm.weight", fp.post_norm[size_t(li)]);
  w.write(layer_file(dir, li).string());
}

void load_layer_state(const fs::path& dir, int li, bool g128, std::map<std::string, QuantizedLinear>& linears,
                      FpTensors& fp) {
  const auto file = io::SafetensorsFile::open(layer_file(dir, li).string());
  auto get = [&](const std::string& n) { return file->get(n).clone(); };
  const std::string p = layer_prefix(li);
  for (const char* n : model::kLayerLinearNames) {
    const std::string name = p + n;
    if (g128) {
      W4G128Weight q;
      q.qweight = get(name + ".qweight");
      q.s1 = get(name + ".s1");
      q.s2 = get(name + ".s2");
      q.zn = get(name + ".zn");
      linears[name] = std::move(q);
    } else {
      W4PerChannelWeight q;
      q.qweight = get(name + ".qweight");
      q.scale = get(name + ".scale");
      q.szero = get(name + ".szero");
      linears[name] = std::move(q);
    }
    if (file->find(name + ".bias")) fp.biases[name] = get(name + ".bias");
  }
  fp.input_norm.push_back(get(p + "input_layernorm.weight"));
  fp.post_norm.push_back(get(p + "post_attention_layernorm.weight"));
}

struct ResumeState {
  int layers_done = 0;
  std::vector<LayerReport> reports;
};

// Reads the state folder; a state from other settings / source / calibration: an error naming it, or (fresh)
// its files are removed and nothing is resumed.
ResumeState open_state(const fs::path& dir, const nlohmann::json& key, bool fresh, int num_layers) {
  ResumeState st;
  const fs::path sj = dir / "state.json";
  if (!fs::exists(sj)) return st;
  nlohmann::json j;
  try {
    std::ifstream f(sj);
    f >> j;
  } catch (const std::exception& e) {
    j = nlohmann::json();
  }
  std::string why;
  if (!j.is_object() || j.value("version", 0) != kStateVersion) {
    why = "it is not a state of this qserve version";
  } else {
    for (const char* k : {"settings", "source", "calibration"})
      if (j.value(k, nlohmann::json()) != key.at(k)) {
        why = std::string("its ") + k + " differ (saved " + j.value(k, nlohmann::json()).dump() + ", now " +
              key.at(k).dump() + ")";
        break;
      }
  }
  if (why.empty()) {
    st.layers_done = j.value("layers_done", 0);
    // After the last layer no hidden state is kept (nothing is left to run on it).
    if (st.layers_done < 0 || st.layers_done > num_layers ||
        (st.layers_done < num_layers && !fs::exists(hidden_file(dir, st.layers_done))))
      why = "its files are incomplete";
    for (int i = 0; why.empty() && i < st.layers_done; ++i)
      if (!fs::exists(layer_file(dir, i))) why = "layer " + std::to_string(i) + " is missing";
  }
  if (why.empty()) {
    for (const auto& r : j.at("reports")) st.reports.push_back(report_from_json(r));
    QS_CHECK(int(st.reports.size()) == st.layers_done) << "resume state " << sj.string() << ": malformed reports";
    return st;
  }
  QS_CHECK(fresh) << "a partial quantization in " << dir.string() << " cannot be resumed: " << why
                  << "; run with --force to start afresh (it is then removed)";
  // Remove only the files this code writes there.
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string n = e.path().filename().string();
    if (e.is_regular_file() && (n == "state.json" || n.starts_with("hidden-") || n.starts_with("layer-")))
      fs::remove(e.path());
  }
  return ResumeState();
}

// hidden empty: the state after the last layer (no hidden file). Every older hidden-N.bin is removed once the new
// state is in place (only one save is ever resumed from).
void save_state(const fs::path& dir, const nlohmann::json& key, int layers_done,
                const std::vector<LayerReport>& reports, const std::vector<float>& hidden) {
  if (!hidden.empty()) write_atomic(hidden_file(dir, layers_done), hidden.data(), hidden.size() * sizeof(float));
  nlohmann::json j = key;
  j["version"] = kStateVersion;
  j["layers_done"] = layers_done;
  nlohmann::json reps = nlohmann::json::array();
  for (const auto& r : reports) reps.push_back(report_to_json(r));
  j["reports"] = reps;
  const std::string text = j.dump(1);
  write_atomic(dir / "state.json", text.data(), text.size());
  const std::string keep = hidden.empty() ? std::string() : hidden_file(dir, layers_done).filename().string();
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string n = e.path().filename().string();
    std::error_code ec;
    if (n != keep && n.starts_with("hidden-") && n.ends_with(".bin") && e.is_regular_file(ec)) fs::remove(e.path(), ec);
  }
}

void restore_hidden(const fs::path& dir, int layers_done, std::vector<float>& hidden) {
  const fs::path p = hidden_file(dir, layers_done);
  std::ifstream f(p, std::ios::binary);
  QS_CHECK(f.good()) << "cannot read " << p.string();
  QS_CHECK(fs::file_size(p) == hidden.size() * sizeof(float))
      << p.string() << " has " << fs::file_size(p) << " bytes, expected " << hidden.size() * sizeof(float);
  f.read(reinterpret_cast<char*>(hidden.data()), std::streamsize(hidden.size() * sizeof(float)));
  QS_CHECK(f.good()) << "cannot read " << p.string();
}

std::string gib(int64_t bytes) {
  char b[32];
  std::snprintf(b, sizeof b, "%.2f GiB", double(bytes) / double(1LL << 30));
  return b;
}

}  // namespace

int64_t peak_host_memory_bytes() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return int64_t(u.ru_maxrss) * 1024;  // Linux: kilobytes
}

void check_quantizable(const io::ModelConfig& c, const QoqOptions& opt) {
  const struct {
    const char* what;
    int64_t v;
  } ks[] = {{"hidden_size", c.hidden_size},
            {"num_attention_heads x head_dim", c.q_size()},
            {"intermediate_size", c.intermediate_size}},
    ns[] = {{"num_key_value_heads x head_dim", c.kv_size()}};
  for (const auto& k : ks)
    QS_CHECK(k.v > 0 && k.v % 128 == 0) << "cannot quantize this model: " << k.what << " = " << k.v
                                        << " is not a multiple of 128 (the input size of a linear must be, for the "
                                           "W4A8 GEMM kernels and the g128 groups)";
  for (const auto& n : ns)
    QS_CHECK(n.v > 0 && n.v % 16 == 0) << "cannot quantize this model: " << n.what << " = " << n.v
                                       << " is not a multiple of 16 (the output size of a linear must be, for the "
                                          "W4A8 GEMM kernels)";
  QS_CHECK(c.head_dim % 2 == 0) << "cannot quantize this model: head_dim " << c.head_dim << " is odd (RoPE pairs)";
  if (opt.rotate) {
    try {
      const Hadamard residual(c.hidden_size), head(c.head_dim);
    } catch (const Error& e) {
      QS_FAIL() << "cannot rotate this model (hidden_size " << c.hidden_size << ", head_dim " << c.head_dim
                << "): " << e.what() << "; quantize with --no-rotate";
    }
  }
}

StreamingResult run_qoq_streaming(const std::string& model_dir, const backends::Backend& be,
                                  const CalibrationSet& calib, const QoqOptions& opt, const StreamingOptions& sopt) {
  const auto t_start = Clock::now();
  QS_CHECK(opt.variant == WeightFormat::kW4A8PerChannel || opt.variant == WeightFormat::kW4A8G128)
      << "QoQ quantizes to W4 (per-channel or g128), not " << weight_format_name(opt.variant);
  QS_CHECK(!calib.windows.empty()) << "QoQ: no calibration windows";
  const io::ModelConfig c = io::load_model_config(model_dir);
  QS_CHECK(c.architecture == "LlamaForCausalLM" || c.architecture == "MistralForCausalLM" ||
           c.architecture == "Qwen2ForCausalLM")
      << "model: unsupported architecture '" << c.architecture << "' in " << model_dir;
  check_quantizable(c, opt);
  const io::TensorStore store = io::TensorStore::open(model_dir);
  check_names(store, c);

  StreamingResult out;
  QoqResult& res = out.result;
  FpTensors& fp = out.fp;
  res.settings = opt.to_json();
  res.settings["calib_text_tokens"] = calib.text_tokens;
  res.settings["calib_windows"] = calib.windows.size();

  // Resume state: the key every saved state must match.
  const fs::path state_dir = sopt.state_dir;
  nlohmann::json key;
  ResumeState st;
  if (!sopt.state_dir.empty()) {
    key["settings"] = res.settings;
    key["source"] = source_identity(model_dir);
    key["calibration"] = calib_identity(calib);
    fs::create_directories(state_dir);
    st = open_state(state_dir, key, sopt.fresh, c.num_layers);
  }

  // Globals: embeddings, final norm, lm_head (tied: the embeddings), transformed as run_qoq does.
  const int64_t H = c.hidden_size;
  Progress bar(double(c.num_layers) * (opt.propagate_quantized ? 5 : 4) + (opt.rotate ? 1 : 0), opt.progress);
  Tensor embed = load_f32(store, "model.embed_tokens.weight", {c.vocab_size, H});
  fp.final_norm = load_f32(store, "model.norm.weight", {H});
  const bool tied = c.tie_word_embeddings || !store.has("lm_head.weight");
  fp.lm_head = tied ? embed : load_f32(store, "lm_head.weight", {c.vocab_size, H});
  std::unique_ptr<Hadamard> hr, hd;
  if (opt.rotate) {
    bar.advance(0, "rotating");
    hr = std::make_unique<Hadamard>(c.hidden_size);
    hd = std::make_unique<Hadamard>(c.head_dim);
    if (tied) fp.lm_head = fp.lm_head.clone();  // untie_embeddings
    fold_norm_head(&fp.final_norm, &fp.lm_head);
    right_multiply_blocks(embed, *hr);
    right_multiply_blocks(fp.lm_head, *hr);
    bar.advance(1, "embedding calibration windows");
  }
  fp.embed = embed;

  // The one-layer shell model: its layer 0 is replaced by each layer in turn.
  io::ModelConfig c1 = c;
  c1.num_layers = 1;
  model::ModelWeights mw;
  mw.embed_tokens = embed;
  mw.final_norm = fp.final_norm;
  mw.lm_head = std::make_unique<model::FpLinear>(embed, Tensor(), be);  // never run; the constructor wants one
  mw.layers.push_back(load_layer(store, c, std::min(st.layers_done, c.num_layers - 1), be));
  model::Model shell(c1, std::move(mw), be);
  const std::unique_ptr<CalibrationRunner> runner_ptr = make_runner(shell, calib, opt);
  CalibrationRunner& runner = *runner_ptr;

  // Finished layers from the state folder.
  if (st.layers_done > 0) {
    for (int i = 0; i < st.layers_done; ++i)
      load_layer_state(state_dir, i, opt.variant == WeightFormat::kW4A8G128, res.linears, fp);
    if (st.layers_done < c.num_layers) {
      std::vector<float> hidden = runner.hidden_host();
      restore_hidden(state_dir, st.layers_done, hidden);
      runner.set_hidden(hidden);
    }
    res.layers = st.reports;
    out.resumed_layers = st.layers_done;
    bar.advance(double(st.layers_done) * (opt.propagate_quantized ? 5 : 4),
                "resumed after layer " + std::to_string(st.layers_done));
    if (opt.progress)
      std::fprintf(stderr, "qserve quantize: resuming at layer %d/%d from %s\n", st.layers_done + 1, c.num_layers,
                   state_dir.string().c_str());
  }

  if (opt.progress)
    std::fprintf(stderr, "\nqserve quantize: embeddings, lm_head and calibration inputs ready in %.1f s\n",
                 since(t_start));
  const auto t_layers = Clock::now();
  auto last_save = Clock::now();
  // Overlapped with the layer in work: the next layer's load (a background task; its parallel_for regions take turns
  // with the calibration's in the one thread pool) and the last resume-state save (the hidden states are 2 GB for
  // an 8B model). Both futures are waited for before they are replaced and before this function returns; on an
  // error their destructors wait.
  std::future<model::DecoderLayer> next_layer;
  std::future<void> saving;
  auto prefetch = [&](int i) {
    if (i < c.num_layers)
      next_layer = std::async(std::launch::async, [&store, &c, &be, i] { return load_layer(store, c, i, be); });
  };
  for (int li = st.layers_done; li < c.num_layers; ++li) {
    const auto t_layer = Clock::now();
    QS_CHECK(!(opt.cancelled && opt.cancelled())) << "interrupted";
    if (li != st.layers_done || shell.weights().layers[0].q_proj == nullptr)
      shell.weights().layers[0] = next_layer.valid() ? next_layer.get() : load_layer(store, c, li, be);
    prefetch(li + 1);
    const auto t_loaded = Clock::now();
    ModelWeights view = weights_view(shell);
    LayerWeights& lw = view.layers[0];
    if (opt.rotate) {
      fold_norms_layer(lw);
      rotate_residual_layer(lw, *hr);
      rotate_value_heads_layer(lw, *hd);
    }
    const double t_load = since(t_layer), t_rotate = since(t_loaded);
    std::map<std::string, QuantizedLinear> layer_linears;
    res.layers.push_back(quantize_layer(shell, runner, 0, li, c.num_layers, lw, opt, bar, layer_linears));
    const auto t_saving = Clock::now();
    // Keep what the checkpoint needs; the FP32 layer and the dequantized references are freed.
    const auto& dl = shell.weights().layers[0];
    fp.input_norm.push_back(dl.input_norm);
    fp.post_norm.push_back(dl.post_attn_norm);
    for (int j = 0; j < model::kNumLayerLinears; ++j) {
      const std::string name = layer_prefix(li) + model::kLayerLinearNames[j];
      const auto& lin = fp_linear(shell, layer_prefix(0) + model::kLayerLinearNames[j]);
      if (lin.has_bias()) fp.biases[name] = lin.bias().clone();
    }
    for (auto& [name, q] : layer_linears) {
      std::visit([](auto& w) { w.dequant = Tensor(); }, q);
      res.linears[name] = std::move(q);
    }
    const bool stop = sopt.stop_after_layers >= 0 && li + 1 >= sopt.stop_after_layers && li + 1 < c.num_layers;
    if (!sopt.state_dir.empty()) {
      std::map<std::string, QuantizedLinear> saved;
      for (const char* n : model::kLayerLinearNames)
        saved[layer_prefix(li) + n] = res.linears.at(layer_prefix(li) + n);
      save_layer(state_dir, li, saved, fp);
      const bool last = li + 1 == c.num_layers;
      if (stop || last || since(last_save) >= sopt.save_every_seconds) {
        if (saving.valid()) saving.get();  // one save at a time; rethrows its error
        std::vector<float> hidden = last ? std::vector<float>() : runner.hidden_host();
        saving = std::async(std::launch::async, [&state_dir, &key, li, reports = res.layers, h = std::move(hidden)] {
          save_state(state_dir, key, li + 1, reports, h);
        });
        if (stop || last) saving.get();
        last_save = Clock::now();
      }
    }
    if (opt.progress) {
      const int done = li + 1 - out.resumed_layers, left = c.num_layers - li - 1;
      const double eta = since(t_layers) / double(done) * double(left);
      const LayerReport& lr = res.layers.back();
      const double* ph = lr.phase_seconds;
      std::fprintf(stderr,
                   "\nlayer %d/%d done in %.1f s (load %.1f, rotate %.1f, calibrate %.1f, transform+search %.1f "
                   "[searches %.1f], quantize %.1f [report %.1f], propagate %.1f, save %.1f); ETA %s; peak host "
                   "memory %s%s\n",
                   li + 1, c.num_layers, since(t_layer), t_load - t_rotate, t_rotate, ph[0], ph[1], lr.search_seconds,
                   ph[2], lr.report_seconds, ph[3],
                   since(t_saving), format_duration(eta).c_str(), gib(peak_host_memory_bytes()).c_str(),
                   opt.cuda ? ("; peak GPU memory " + gib(cuda_peak_memory_bytes())).c_str() : "");
    }
    if (stop)
      QS_FAIL() << "stopped after layer " << li + 1 << " as asked (QSERVE_QUANTIZE_STOP_AFTER_LAYER); the state in "
                << state_dir.string() << " resumes at layer " << li + 2;
  }
  bar.finish();
  finish_settings(res, opt);
  res.seconds = since(t_start);
  return out;
}

}  // namespace qs::quant::qoq
