// The GPU model runner (cuda_executor.h): weights on the device, preallocated activations, the paged KV pool, the
// per-layer launch sequence, CUDA-graph capture of decode steps, GPU greedy sampling and the per-kernel profile.
#include "engine/cuda/cuda_executor.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <map>
#include <sstream>

#include "backends/cuda/attention.h"
#include "backends/cuda/fp8_gemm.h"
#include "backends/ref_cpu/fp8_gemm.h"
#include "backends/cuda/gemm_w4a8.h"
#include "core/error.h"
#include "core/logging.h"
#include "engine/weight_fusion.h"
#include "kernels/attention/decode_attention.h"
#include "kernels/attention/prefill_attention.h"
#include "kernels/common/cuda_check.h"
#include "kernels/common/device_buffer.h"
#include "kernels/common/pdl.h"
#include "kernels/elementwise/elementwise.h"
#include "kernels/eval/logit_scores.h"
#include "kernels/gemm_w4a8/qgemm.h"
#include "kernels/gemm_w4a8/qgemm_tune.h"
#include "kernels/kv_cache/kv_cache_readback.h"
#include "kernels/kv_cache/kv_cache_write.h"
#include "kernels/norm_quant/norm_quant.h"
#include "kernels/sampling/sampling.h"
#include "model/quantized/quantized_linear.h"

namespace qs::engine {
namespace {

#define QS_CUBLAS_CHECK(expr)                                                               \
  do {                                                                                      \
    cublasStatus_t _qs_s = (expr);                                                          \
    QS_CHECK(_qs_s == CUBLAS_STATUS_SUCCESS) << #expr << ": cuBLAS status " << int(_qs_s); \
  } while (0)

enum OpClass { kGemm = 0, kAttention, kRopeKv, kNormQuant, kLmHead, kSampling, kOther, kNumClasses };
const char* const kClassNames[kNumClasses] = {"gemm", "attention", "rope_kv_write", "norm_quant",
                                              "lm_head", "sampling", "other"};

void check(const Status& s) { s.throw_if_error(); }

// One fused linear on the device: W4A8 (kernel params with the weight pointers filled) or FP16 [n, k].
struct DevLinear {
  int n = 0, k = 0;
  bool quant = false;
  kernels::QGemmParams qp;      // weight fields set; per-call fields filled at run
  cuda::QGemmDeviceWeights qw;  // owns loaded quantized weights (random ones live in the executor's allocations)
  kernels::QGemmPrepared prep;  // W4A8: the weights' TMA descriptors, built once at upload (qgemm_prepare)
  uint16_t* w16 = nullptr;      // FP16 [n, k]
  uint8_t* w8 = nullptr;        // FP8 path: e4m3 [n, k]
  float* sw = nullptr;          // FP8 path: FP32 [n] per-channel scale
  cuda::Fp8Gemm* gemm8 = nullptr;  // FP8 path: the cuBLASLt plan of this shape (owned by the executor)
  uint16_t* bias = nullptr;     // FP16 [n] or null
};

struct DevLayer {
  DevLinear qkv, o, gate_up, down;
  uint16_t* in_norm = nullptr;
  uint16_t* post_norm = nullptr;
};

// What one launch sequence processes (device order: decode sequences first, then prefill ones).
struct StepShape {
  int m = 0;          // token rows (graph buckets: padded)
  int nd = 0;         // decode sequences (q_len == 1), rows [0, nd)
  int np = 0;         // prefill sequences, rows [nd, m)
  int max_q_len = 0;  // over the prefill sequences
  int head_rows = 0;  // rows of the lm_head pass (out_rows[0 .. head_rows))
  bool greedy = false;  // run the sampling kernel on the head rows
  const kernels::DecodePlan* dplan = nullptr;
};

}  // namespace

struct CudaExecutor::Impl {
  io::ModelConfig cfg;
  CudaExecutorOptions opt;
  std::string desc;
  int device = 0, sm_version = 0, num_sms = 0;
  std::string gpu_name;
  cudaStream_t stream = nullptr;
  cublasHandle_t cublas = nullptr;
  std::vector<DeviceBuffer<uint8_t>> allocs;  // every device allocation of the runner but the KV pool and GEMM weights
  Memory mem;

  bool quant = false;  // W4A8 GEMMs
  bool deq = false;    // fp16 path over a quantized model's dequantized weights (W4A16)
  bool fp8 = false;    // FP8 GEMMs (cuBLASLt) and an FP8 cache
  std::vector<std::unique_ptr<cuda::Fp8Gemm>> fp8_gemms;
  void* fp8_ws = nullptr;
  uint8_t* x8 = nullptr;  // e4m3 activations [M, wide]
  float* sx8 = nullptr;   // FP32 [M]
  WeightFormat variant = WeightFormat::kW4A8PerChannel;
  std::vector<DevLayer> layers;
  uint16_t* embed = nullptr;       // FP16 [V, H]
  uint16_t* final_norm = nullptr;  // FP16 [H]
  uint16_t* lm_head = nullptr;     // FP16 [V, H]
  float* inv_freq = nullptr;       // [D/2]

  // Sizes.
  int H = 0, Q = 0, KV = 0, I = 0, V = 0, D = 0, L = 0, NH = 0, NKV = 0;
  int M = 0, S = 0, R = 0, stride = 0, max_ctx = 0;
  // Activations.
  uint16_t *hidden = nullptr, *xf16 = nullptr, *qkv = nullptr, *qr = nullptr, *kr = nullptr, *vr = nullptr;
  uint16_t *attn = nullptr, *gate_up = nullptr, *head_in = nullptr, *sx = nullptr, *xsum = nullptr;
  int32_t* qsum = nullptr;  // g128: the exact sum of each token's INT8 codes (qgemm.h)
  int8_t* q8 = nullptr;
  float* logits = nullptr;
  // Evaluation scoring (score_window): labels i32 [M], nll f64 [M], kl f64 [M], top1 u8 [M], non-finite count i32
  // [M]; the kept logits FP32 [keep_rows, V] (options keep_logits_rows).
  int32_t* score_labels = nullptr;
  double *score_nll = nullptr, *score_kl = nullptr;
  uint8_t* score_top1 = nullptr;
  int32_t* score_bad = nullptr;
  float* keep_buf = nullptr;
  int keep_rows = 0;
  int64_t kept_rows = 0;  // rows of keep_buf the last keep = true window filled (0: nothing kept)
  const model::WindowScorer* self = nullptr;
  struct ScoreJob {
    const std::vector<int32_t>* labels = nullptr;
    const model::KeptLogits* ref = nullptr;
    bool keep = false;
    model::WindowScores* out = nullptr;
  };
  const ScoreJob* score_job = nullptr;  // set by score_window around its execute()
  bool readback_self_kv = false;         // this step: prefill rows attend to their own K/V as the KV4 cache holds them
  int32_t* sampled_d = nullptr;  // sampled token per head row (kernels/sampling)
  int32_t* sampled_h = nullptr;  // pinned mirror
  // Per head row sampling settings (kernels/sampling): one device buffer + pinned mirror, fixed offsets:
  // temperature f32 [R], top_k i32 [R], top_p f32 [R], seed u64 [R], step u64 [R].
  uint8_t* samp_d = nullptr;
  uint8_t* samp_h = nullptr;
  size_t samp_bytes = 0, so_topk = 0, so_topp = 0, so_seed = 0, so_step = 0;
  // Step metadata: one device buffer and its pinned host mirror, fixed offsets (graph-stable addresses).
  int32_t* meta_d = nullptr;
  int32_t* meta_h = nullptr;
  size_t meta_n = 0, o_ids = 0, o_pos = 0, o_slot = 0, o_cu = 0, o_prefix = 0, o_ctx = 0, o_bt = 0, o_out = 0;
  // Workspaces.
  void* gemm_ws = nullptr;
  size_t gemm_ws_bytes = 0;
  void* dec_ws = nullptr;
  size_t dec_ws_bytes = 0;
  void* cublas_ws = nullptr;
  // KV pool.
  kernels::KvCacheLayout layout;
  cuda::PagedKvCache kv;
  int64_t num_pages = 0;
  int32_t scratch_page = 0;
  // Graphs.
  std::vector<int> buckets;
  std::map<int, kernels::DecodePlan> bucket_plans;
  std::map<int, cudaGraphExec_t> graphs;
  // Profiling.
  bool profiling = false;
  struct Ev {
    int cls;
    cudaEvent_t a, b;
  };
  std::vector<Ev> evs;
  std::vector<cudaEvent_t> ev_pool;
  size_t ev_used = 0;
  cudaEvent_t step_a = nullptr, step_b = nullptr;
  std::vector<std::pair<std::string, double>> last_prof;

  ~Impl() {
    for (auto& [b, g] : graphs) cudaGraphExecDestroy(g);
    for (cudaEvent_t e : ev_pool) cudaEventDestroy(e);
    if (step_a) cudaEventDestroy(step_a);
    if (step_b) cudaEventDestroy(step_b);
    if (cublas) cublasDestroy(cublas);
    if (meta_h) cudaFreeHost(meta_h);
    if (sampled_h) cudaFreeHost(sampled_h);
    if (samp_h) cudaFreeHost(samp_h);
    if (stream) cudaStreamDestroy(stream);
  }

  template <typename T>
  T* alloc(size_t count, int64_t* counter) {
    const size_t bytes = std::max<size_t>(16, count * sizeof(T));
    try {
      allocs.emplace_back(bytes);
    } catch (const Error& e) {
      size_t fr = 0, tot = 0;
      cudaMemGetInfo(&fr, &tot);
      QS_FAIL() << "engine: out of GPU memory allocating " << bytes << " bytes (" << fr / (1 << 20) << " MiB free of "
                << tot / (1 << 20) << " MiB): " << e.what()
                << "; lower max_batch_tokens / max_batch_seqs or use a smaller model";
    }
    *counter += int64_t(bytes);
    return reinterpret_cast<T*>(allocs.back().get());
  }
  uint16_t* upload16(const std::vector<uint16_t>& h) {
    uint16_t* d = alloc<uint16_t>(h.size(), &mem.weight_bytes);
    QS_CUDA_CHECK(cudaMemcpy(d, h.data(), h.size() * 2, cudaMemcpyHostToDevice));
    return d;
  }

  // ------------------------------------------------------------------ setup
  void init_device() {
    int n = 0;
    QS_CHECK(cudaGetDeviceCount(&n) == cudaSuccess && n > 0) << "engine: no CUDA GPU on this machine";
    QS_CUDA_CHECK(cudaGetDevice(&device));
    cudaDeviceProp p{};
    QS_CUDA_CHECK(cudaGetDeviceProperties(&p, device));
    gpu_name = p.name;
    sm_version = p.major * 10 + p.minor;
    num_sms = p.multiProcessorCount;
    QS_CHECK(p.major == 9) << "engine: GPU " << gpu_name << " is sm_" << sm_version
                           << "; this build's kernels target sm_90a (H100/H200) only";
    check(kernels::elementwise_probe());
    QS_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    QS_CUBLAS_CHECK(cublasCreate(&cublas));
    QS_CUBLAS_CHECK(cublasSetStream(cublas, stream));
  }

  void check_shapes() {
    const auto& c = cfg;
    QS_CHECK(c.hidden_size > 0 && c.num_layers > 0 && c.num_heads > 0 && c.num_kv_heads > 0 && c.vocab_size > 0 &&
             c.intermediate_size > 0)
        << "engine: config has a zero dimension";
    QS_CHECK(c.head_dim == 128) << "engine: head_dim " << c.head_dim << " is not supported (the kernels need 128)";
    QS_CHECK(c.hidden_size % 128 == 0) << "engine: hidden_size " << c.hidden_size
                                       << " is not a multiple of 128 (GEMM K tile)";
    QS_CHECK(c.intermediate_size % 128 == 0)
        << "engine: intermediate_size " << c.intermediate_size << " is not a multiple of 128 (GEMM K tile)";
    QS_CHECK(c.num_heads % c.num_kv_heads == 0) << "engine: num_heads " << c.num_heads
                                                << " is not a multiple of num_kv_heads " << c.num_kv_heads;
    QS_CHECK(c.num_heads / c.num_kv_heads <= 16) << "engine: GQA group " << c.num_heads / c.num_kv_heads
                                                 << " > 16 is not supported by the decode kernel";
    QS_CHECK(opt.page_size > 0 && opt.page_size % 16 == 0)
        << "engine: page_size " << opt.page_size << " must be a positive multiple of 16";
    QS_CHECK(opt.max_batch_tokens >= 1 && opt.max_batch_seqs >= 1 && opt.max_batch_seqs <= opt.max_batch_tokens)
        << "engine: need 1 <= max_batch_seqs (" << opt.max_batch_seqs << ") <= max_batch_tokens ("
        << opt.max_batch_tokens << ")";
    QS_CHECK(opt.max_batch_tokens <= 65535) << "engine: max_batch_tokens over 65535 is not supported";
    QS_CHECK(opt.gpu_memory_utilization > 0.0 && opt.gpu_memory_utilization <= 1.0)
        << "engine: gpu_memory_utilization must be in (0, 1], got " << opt.gpu_memory_utilization;
    H = c.hidden_size;
    Q = c.q_size();
    KV = c.kv_size();
    I = c.intermediate_size;
    V = c.vocab_size;
    D = c.head_dim;
    L = c.num_layers;
    NH = c.num_heads;
    NKV = c.num_kv_heads;
    int def_ctx = c.max_position_embeddings > 0 ? std::min(c.max_position_embeddings, 16384) : 16384;
    if (c.sliding_window > 0) def_ctx = std::min(def_ctx, c.sliding_window);
    max_ctx = opt.max_context > 0 ? opt.max_context : def_ctx;
    QS_CHECK(c.max_position_embeddings <= 0 || max_ctx <= c.max_position_embeddings)
        << "engine: max_context " << max_ctx << " exceeds max_position_embeddings " << c.max_position_embeddings;
    QS_CHECK(c.sliding_window <= 0 || max_ctx <= c.sliding_window)
        << "engine: max_context " << max_ctx << " exceeds the sliding window " << c.sliding_window
        << " (sliding-window attention is not implemented)";
    M = opt.max_batch_tokens;
    S = opt.max_batch_seqs;
    R = opt.max_logit_rows > 0 ? opt.max_logit_rows : std::max(S, 256);
    R = std::max(R, S);
    stride = (max_ctx + opt.page_size - 1) / opt.page_size;
    quant = opt.dtype == EngineDType::kW4A8KV4;
    fp8 = opt.dtype == EngineDType::kFp8;
    QS_CHECK(opt.kv_cache.empty() || opt.kv_cache == "fp16" || opt.kv_cache == "kv4")
        << "engine: kv_cache override must be empty, \"fp16\" or \"kv4\", got \"" << opt.kv_cache << "\"";
    QS_CHECK(!(fp8 && opt.kv_cache == "kv4"))
        << "engine: dtype fp8 runs its own FP8 cache; a KV4 cache with FP weights runs on dtype fp16";
    QS_CHECK(opt.keep_logits_rows >= 0 && opt.keep_logits_rows <= opt.max_batch_tokens)
        << "engine: keep_logits_rows " << opt.keep_logits_rows << " must be in [0, max_batch_tokens "
        << opt.max_batch_tokens << "]";
  }

  void set_quant_linear(DevLinear& d, const model::QuantizedWeights& w) {
    const ref_cpu::QGemmWeights gw{w.variant,
                                   w.qweight.dim(0),
                                   w.variant == WeightFormat::kW8A8 ? w.qweight.dim(1) : 2 * w.qweight.dim(1),
                                   static_cast<const uint8_t*>(w.qweight.raw()),
                                   static_cast<const uint16_t*>(w.scale.raw()),
                                   static_cast<const uint16_t*>(w.szero.raw()),
                                   static_cast<const uint8_t*>(w.s2.raw()),
                                   static_cast<const int8_t*>(w.zn.raw())};
    d.qw = cuda::QGemmDeviceWeights::upload(gw);
    mem.weight_bytes += int64_t(w.qweight.nbytes() + w.scale.nbytes() + w.szero.nbytes() + 2 * w.s2.nbytes());
    d.n = d.qw.n();
    d.k = d.qw.k();
    d.quant = true;
    d.qp = d.qw.params(cuda::QGemmCall{});
    d.prep = d.qw.prepared();
    if (w.bias.raw()) d.bias = upload16(to_fp16_bits(w.bias));
  }

  static const model::QuantizedWeights& qweights(const model::Linear& l, const std::string& name) {
    const auto* q = dynamic_cast<const model::QuantizedLinear*>(&l);
    QS_CHECK(q != nullptr) << "engine: dtype w4a8kv4 needs a quantized checkpoint, but " << name << " is a "
                           << l.kind() << " linear (quantize it with `qserve quantize`, or use --dtype fp16)";
    QS_CHECK(q->act_mode() == model::ActMode::kInt8)
        << "engine: " << name << " is weight-only (" << q->kind() << "); the GPU runs W4A8 (INT8 activations)";
    return q->weights();
  }

  void load_fp_linear(DevLinear& d, const std::vector<const model::Linear*>& parts, const std::string& name) {
    std::vector<const Tensor*> ws, bs;
    std::vector<Tensor> deq_w;  // W4A16: the dequantized FP32 weights of quantized parts (kept alive here)
    deq_w.reserve(parts.size());
    bool any_bias = false;
    for (const auto* p : parts) {
      const Tensor* b = nullptr;
      if (const auto* q = dynamic_cast<const model::QuantizedLinear*>(p)) {
        QS_CHECK(deq) << "engine: " << name << " is quantized but the model was not taken as quantized";
        deq_w.push_back(q->dequantized_weight());  // exactly the real values the integer path represents
        ws.push_back(&deq_w.back());
        b = &q->weights().bias;
      } else {
        QS_CHECK(!deq) << "engine: " << name << " is a " << p->kind() << " linear in a quantized model";
        ws.push_back(&fp_linear_weight(*p, name.c_str(), &b));
      }
      bs.push_back(b);
      any_bias = any_bias || (b && b->raw());
    }
    const std::vector<uint16_t> w16 = fuse_fp16_rows(ws);
    d.k = int(ws[0]->dim(1));
    d.n = 0;
    for (const Tensor* w : ws) d.n += int(w->dim(0));
    if (fp8) {
      const ref_cpu::Fp8Weights q = ref_cpu::quantize_fp8_weights_f16(w16.data(), d.n, d.k);
      d.w8 = alloc<uint8_t>(q.q.size(), &mem.weight_bytes);
      QS_CUDA_CHECK(cudaMemcpy(d.w8, q.q.data(), q.q.size(), cudaMemcpyHostToDevice));
      d.sw = alloc<float>(q.scale.size(), &mem.weight_bytes);
      QS_CUDA_CHECK(cudaMemcpy(d.sw, q.scale.data(), q.scale.size() * 4, cudaMemcpyHostToDevice));
    } else {
      d.w16 = upload16(w16);
    }
    if (any_bias) {
      std::vector<uint16_t> b;
      for (size_t i = 0; i < ws.size(); ++i) {
        if (bs[i] && bs[i]->raw()) {
          const auto v = to_fp16_bits(*bs[i]);
          b.insert(b.end(), v.begin(), v.end());
        } else {
          b.insert(b.end(), size_t(ws[i]->dim(0)), uint16_t(0));
        }
      }
      d.bias = upload16(b);
    }
  }

  // Several parts become one GEMM: rows back to back, or (interleave: gate/up for the SiLU*up epilogue) row pairs.
  void load_quant_linear(DevLinear& d, const std::vector<const model::Linear*>& parts, const std::string& name,
                         bool interleave = false) {
    std::vector<const model::QuantizedWeights*> qs;
    for (const auto* p : parts) qs.push_back(&qweights(*p, name));
    if (qs.size() == 1) {
      set_quant_linear(d, *qs[0]);
    } else if (interleave) {
      QS_CHECK(qs.size() == 2) << "engine: " << name << ": an interleaved fusion takes two parts";
      set_quant_linear(d, interleave_quantized_rows(*qs[0], *qs[1]));
    } else {
      set_quant_linear(d, fuse_quantized_rows(qs));
    }
  }

  void load_model(const model::Model& m) {
    const auto& w = m.weights();
    // Decide the path from the first linear.
    const auto* q0 = dynamic_cast<const model::QuantizedLinear*>(w.layers[0].q_proj.get());
    const bool is_quant = q0 != nullptr;
    QS_CHECK(opt.dtype != EngineDType::kW4A8KV4 || is_quant) << "engine: dtype w4a8kv4 needs a quantized checkpoint (`qserve quantize`); this model is FP "
                            "(use --dtype fp16)";
    QS_CHECK(!(is_quant && fp8)) << "engine: dtype fp8 needs an FP checkpoint; this one is quantized (use --dtype "
                                    "w4a8kv4, or fp16 for its dequantized weights)";
    QS_CHECK(!(quant && q0->act_mode() == model::ActMode::kFloat))
        << "engine: the model is weight-only (" << q0->kind() << "); on the GPU it runs as --dtype fp16 over its "
           "dequantized weights, not w4a8kv4";
    deq = is_quant && !quant;
    embed = upload16(to_fp16_bits(w.embed_tokens));
    final_norm = upload16(to_fp16_bits(w.final_norm));
    lm_head = upload16(to_fp16_bits(fp_linear_weight(*w.lm_head, "lm_head")));
    layers.resize(size_t(L));
    for (int l = 0; l < L; ++l) {
      const auto& src = w.layers[size_t(l)];
      auto& d = layers[size_t(l)];
      const std::string p = "model.layers." + std::to_string(l) + ".";
      d.in_norm = upload16(to_fp16_bits(src.input_norm));
      d.post_norm = upload16(to_fp16_bits(src.post_attn_norm));
      auto load = [&](DevLinear& dl, std::vector<const model::Linear*> parts, const std::string& name,
                      bool interleave = false) {
        if (quant)
          load_quant_linear(dl, parts, p + name, interleave);
        else
          load_fp_linear(dl, parts, p + name);
      };
      load(d.qkv, {src.q_proj.get(), src.k_proj.get(), src.v_proj.get()}, "self_attn.qkv_proj");
      load(d.o, {src.o_proj.get()}, "self_attn.o_proj");
      load(d.gate_up, {src.gate_proj.get(), src.up_proj.get()}, "mlp.gate_up_proj", true);
      load(d.down, {src.down_proj.get()}, "mlp.down_proj");
      if (quant) {
        for (const DevLinear* dl : {&d.qkv, &d.o, &d.gate_up, &d.down})
          QS_CHECK(dl->qp.variant == d.qkv.qp.variant) << "engine: layers mix weight variants";
        variant = d.qkv.qp.variant;
      }
    }
    if (quant) {
      QS_CHECK(variant == layers[0].qkv.qp.variant) << "engine: layers mix weight variants";
      const bool w8 = variant == WeightFormat::kW8A8;
      desc = std::string(w8 ? "w8a8" : "w4a8") + (opt.kv_cache == "fp16" ? "kv16" : "kv4") +
             (w8 ? "" : variant == WeightFormat::kW4A8G128 ? " g128" : " per-channel");
    } else if (deq) {
      desc = std::string("fp16 over dequantized ") + q0->kind() + " weights" + (opt.kv_cache == "kv4" ? ", kv4" : "");
    } else {
      desc = std::string(fp8 ? "fp8" : "fp16") + (opt.kv_cache == "kv4" ? " kv4" : "");
    }
  }

  void random_linear(DevLinear& d, int n, int k, bool g128, uint64_t seed, bool bias) {
    d.n = n;
    d.k = k;
    const float amp = std::sqrt(3.0f / float(k));
    if (quant) {
      d.quant = true;
      auto& p = d.qp;
      p.variant = g128 ? WeightFormat::kW4A8G128 : WeightFormat::kW4A8PerChannel;
      p.n = n;
      p.k = k;
      void* w = alloc<uint8_t>(size_t(n) * k / 2, &mem.weight_bytes);
      check(kernels::fill_random_bytes(w, int64_t(n) * k / 2, seed, stream));
      p.w = w;
      uint16_t* s = alloc<uint16_t>(size_t(n), &mem.weight_bytes);
      if (g128) {
        check(kernels::fill_const_f16(s, n, amp / 68.0f, stream));
        uint16_t* s2 = alloc<uint16_t>(size_t(n) * (k / 128), &mem.weight_bytes);
        check(kernels::fill_random_s2zn(s2, int64_t(n) * (k / 128), seed + 1, stream));
        p.s2zn = s2;
      } else {
        check(kernels::fill_const_f16(s, n, amp / 7.5f, stream));
        uint16_t* sz = alloc<uint16_t>(size_t(n), &mem.weight_bytes);
        check(kernels::fill_const_f16(sz, n, amp, stream));
        p.szero = sz;
      }
      p.scale = s;
      check(kernels::qgemm_prepare(p, &d.prep));
    } else if (fp8) {
      d.w8 = alloc<uint8_t>(size_t(n) * k, &mem.weight_bytes);
      check(kernels::fill_random_e4m3(d.w8, int64_t(n) * k, seed, stream));
      d.sw = alloc<float>(size_t(n), &mem.weight_bytes);
      std::vector<float> sw(size_t(n), amp / 448.0f);
      QS_CUDA_CHECK(cudaMemcpy(d.sw, sw.data(), sw.size() * 4, cudaMemcpyHostToDevice));
    } else {
      d.w16 = alloc<uint16_t>(size_t(n) * k, &mem.weight_bytes);
      check(kernels::fill_uniform_f16(d.w16, int64_t(n) * k, seed, amp, stream));
    }
    if (bias) {
      d.bias = alloc<uint16_t>(size_t(n), &mem.weight_bytes);
      check(kernels::fill_uniform_f16(d.bias, n, seed + 2, 0.1f, stream));
    }
  }

  void random_model(const RandomWeightsOptions& rw) {
    uint64_t seed = rw.seed * 1000003ull;
    embed = alloc<uint16_t>(size_t(V) * H, &mem.weight_bytes);
    check(kernels::fill_uniform_f16(embed, int64_t(V) * H, ++seed, 1.0f, stream));
    final_norm = alloc<uint16_t>(size_t(H), &mem.weight_bytes);
    check(kernels::fill_const_f16(final_norm, H, 1.0f, stream));
    lm_head = alloc<uint16_t>(size_t(V) * H, &mem.weight_bytes);
    check(kernels::fill_uniform_f16(lm_head, int64_t(V) * H, ++seed, std::sqrt(3.0f / float(H)), stream));
    layers.resize(size_t(L));
    for (auto& d : layers) {
      d.in_norm = alloc<uint16_t>(size_t(H), &mem.weight_bytes);
      d.post_norm = alloc<uint16_t>(size_t(H), &mem.weight_bytes);
      check(kernels::fill_const_f16(d.in_norm, H, 1.0f, stream));
      check(kernels::fill_const_f16(d.post_norm, H, 1.0f, stream));
      random_linear(d.qkv, Q + 2 * KV, H, rw.g128, seed += 10, cfg.attention_bias);
      random_linear(d.o, H, Q, rw.g128, seed += 10, false);
      random_linear(d.gate_up, 2 * I, H, rw.g128, seed += 10, false);
      random_linear(d.down, H, I, rw.g128, seed += 10, false);
    }
    variant = rw.g128 ? WeightFormat::kW4A8G128 : WeightFormat::kW4A8PerChannel;
    desc = quant ? std::string("w4a8kv4 ") + (rw.g128 ? "g128" : "per-channel") + " random"
                 : fp8 ? "fp8 random" : "fp16 random";
    QS_CUDA_CHECK(cudaStreamSynchronize(stream));
  }

  void check_linear_shapes() {
    for (const auto& d : layers) {
      for (const DevLinear* l : {&d.qkv, &d.o, &d.gate_up, &d.down})
        QS_CHECK(l->n % 16 == 0 && l->k % 128 == 0)
            << "engine: a GEMM of shape [" << l->n << ", " << l->k << "] needs N % 16 == 0 and K % 128 == 0";
      QS_CHECK(d.qkv.n == Q + 2 * KV && d.qkv.k == H && d.o.n == H && d.o.k == Q && d.gate_up.n == 2 * I &&
               d.gate_up.k == H && d.down.n == H && d.down.k == I)
          << "engine: layer weights do not match the config";
    }
  }

  void alloc_activations() {
    int64_t* c = &mem.activation_bytes;
    const int wide = std::max({H, Q, I});
    hidden = alloc<uint16_t>(size_t(M) * H, c);
    xf16 = alloc<uint16_t>(size_t(M) * wide, c);
    qkv = alloc<uint16_t>(size_t(M) * (Q + 2 * KV), c);
    qr = alloc<uint16_t>(size_t(M) * Q, c);
    kr = alloc<uint16_t>(size_t(M) * KV, c);
    vr = alloc<uint16_t>(size_t(M) * KV, c);
    attn = alloc<uint16_t>(size_t(M) * Q, c);
    if (!quant) gate_up = alloc<uint16_t>(size_t(M) * 2 * I, c);  // W4A8 writes SiLU*up straight into xf16
    q8 = alloc<int8_t>(size_t(M) * wide, c);
    if (fp8) {
      x8 = alloc<uint8_t>(size_t(M) * wide, c);
      sx8 = alloc<float>(size_t(M), c);
    }
    sx = alloc<uint16_t>(size_t(M), c);
    xsum = alloc<uint16_t>(size_t(M), c);
    qsum = alloc<int32_t>(size_t(M), c);
    head_in = alloc<uint16_t>(size_t(R) * H, c);
    logits = alloc<float>(size_t(R) * V, c);
    score_labels = alloc<int32_t>(size_t(M), c);
    score_nll = alloc<double>(size_t(M), c);
    score_kl = alloc<double>(size_t(M), c);
    score_top1 = alloc<uint8_t>(size_t(M), c);
    score_bad = alloc<int32_t>(size_t(M), c);
    keep_rows = opt.keep_logits_rows;
    if (keep_rows > 0) keep_buf = alloc<float>(size_t(keep_rows) * V, c);
    sampled_d = alloc<int32_t>(size_t(R), c);
    QS_CUDA_CHECK(cudaMallocHost(&sampled_h, size_t(R) * 4));
    so_topk = size_t(R) * 4;
    so_topp = so_topk + size_t(R) * 4;
    so_seed = (so_topp + size_t(R) * 4 + 15) / 16 * 16;
    so_step = so_seed + size_t(R) * 8;
    samp_bytes = so_step + size_t(R) * 8;
    samp_d = alloc<uint8_t>(samp_bytes, c);
    QS_CUDA_CHECK(cudaMallocHost(&samp_h, samp_bytes));
    // Metadata.
    size_t off = 0;
    auto take = [&](size_t n) {
      const size_t o = off;
      off += (n + 3) / 4 * 4;  // 16-byte aligned sections
      return o;
    };
    o_ids = take(size_t(M));
    o_pos = take(size_t(M));
    o_slot = take(size_t(M));
    o_cu = take(size_t(S) + 1);
    o_prefix = take(size_t(S));
    o_ctx = take(size_t(S));
    o_bt = take(size_t(S) * stride);
    o_out = take(size_t(std::max(M, R)));
    meta_n = off;
    meta_d = alloc<int32_t>(meta_n, c);
    QS_CUDA_CHECK(cudaMallocHost(&meta_h, meta_n * 4));
    std::memset(meta_h, 0, meta_n * 4);
    // RoPE frequencies.
    const auto f = io::rope_inv_freq(cfg);
    std::vector<float> ff(f.begin(), f.end());
    inv_freq = alloc<float>(ff.size(), c);
    QS_CUDA_CHECK(cudaMemcpy(inv_freq, ff.data(), ff.size() * 4, cudaMemcpyHostToDevice));
  }

  kernels::QGemmPlan gemm_plan(const DevLinear& d, int m) const {
    return kernels::qgemm_plan(d.prep, m);
  }

  // Measured GEMM plans (kernels/gemm_w4a8/qgemm_tune.h, options tune_gemms) for the token counts the engine runs
  // most: the decode graph buckets on the wgmma path (> 16 tokens) and the largest step (max_batch_tokens), for
  // each of a layer's four linears with the epilogue the forward uses, timed over the same linear of successive
  // layers (weights from DRAM, as in a step) on the activation buffers (before any request). Stored in every
  // layer's prepared weights, so alloc_workspaces sizes the workspace for them and the decode graphs capture them.
  void tune_gemms() {
    if (!quant || !opt.tune_gemms || sm_version < 90) return;
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<int> ms;
    for (int b = 32; b < S; b <<= 1) ms.push_back(b);  // the decode buckets (alloc_workspaces) above 16
    if (S > 16) ms.push_back(S);
    if (M > 16 && M != S) ms.push_back(M);
    if (ms.empty()) return;
    const int wide = std::max({H, Q, I});
    QS_CUDA_CHECK(cudaMemsetAsync(q8, 0x5b, size_t(M) * wide, stream));  // nonzero codes, as in a real step
    QS_CUDA_CHECK(cudaMemsetAsync(sx, 0, size_t(M) * 2, stream));
    QS_CUDA_CHECK(cudaMemsetAsync(xsum, 0, size_t(M) * 2, stream));
    QS_CUDA_CHECK(cudaMemsetAsync(qsum, 0, size_t(M) * 4, stream));
    const kernels::QGemmTuneOptions topt;
    // One workspace for every candidate: what the model's plans need, and at least 64 MiB (stream-K partials).
    size_t ws_bytes = size_t(64) << 20;
    const DevLayer& l0 = layers[0];
    for (int m : ms)
      for (const DevLinear* d : {&l0.qkv, &l0.o, &l0.gate_up, &l0.down})
        ws_bytes = std::max(ws_bytes, gemm_plan(*d, m).workspace_bytes);
    DeviceBuffer<uint8_t> ws(ws_bytes);
    QS_CUDA_CHECK(cudaMemsetAsync(ws.get(), 0, ws_bytes, stream));
    const char* const names[4] = {"qkv", "o", "gate_up", "down"};  // a layer's fused linears (DevLayer)
    int cells = 0, changed = 0;
    double model_us = 0, tuned_us = 0;
    std::ostringstream picks;
    for (int j = 0; j < 4; ++j) {
      auto lin = [&](DevLayer& l) -> DevLinear& { return j == 0 ? l.qkv : j == 1 ? l.o : j == 2 ? l.gate_up : l.down; };
      const DevLinear& first = lin(layers[0]);
      const double wbytes = double(first.n) * first.k / (variant == WeightFormat::kW8A8 ? 1 : 2);
      const int rot = int(std::clamp(std::ceil(192e6 / wbytes), 1.0, double(L)));  // > 3x L2 of weights
      for (int m : ms) {
        std::vector<kernels::QGemmParams> calls;
        std::vector<const kernels::QGemmPrepared*> preps;
        for (int l = 0; l < rot; ++l) {
          const DevLinear& d = lin(layers[l]);
          // As the forward calls it: o_proj / down_proj add into the residual stream, gate_up writes SiLU*up.
          calls.push_back(quant_params(d, m, j == 0 ? qkv : j == 2 ? xf16 : hidden, j == 1 || j == 3, j == 2));
          preps.push_back(&d.prep);
        }
        kernels::QGemmTuneResult r;
        check(kernels::qgemm_tune(calls, preps, stream, ws.get(), ws_bytes, topt, &r));
        for (DevLayer& l : layers) check(kernels::qgemm_set_tuned_plan(&lin(l).prep, m, r.plan));
        ++cells;
        model_us += r.model_us;
        tuned_us += r.us;
        if (r.us < r.model_us) {
          ++changed;
          picks << " " << names[j] << "@" << m << "=" << kernels::qgemm_config_name(r.plan.config)
                << (r.plan.stream_k_ctas > 0 ? "/sk" : r.plan.splits > 1 ? (r.plan.global_split ? "/g" : "/c") : "")
                << (r.plan.splits > 1 ? std::to_string(r.plan.splits) : "");
        }
      }
    }
    QS_CUDA_CHECK(cudaStreamSynchronize(stream));
    if (opt.verbose) {
      const double ms_taken =
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      QS_LOG(INFO) << "engine: measured GEMM plans for " << cells << " (linear, M) cells in " << int(ms_taken)
                   << " ms: " << changed << " differ from the cost model's, per layer summed " << model_us << " -> "
                   << tuned_us << " us" << (changed ? ";" : "") << picks.str();
    }
  }

  void alloc_workspaces() {
    int64_t* c = &mem.workspace_bytes;
    if (quant) {
      size_t ws = 0;
      const auto& d = layers[0];
      for (int m = 1; m <= M; ++m)
        for (const DevLinear* l : {&d.qkv, &d.o, &d.gate_up, &d.down}) ws = std::max(ws, gemm_plan(*l, m).workspace_bytes);
      gemm_ws_bytes = ws;
      if (ws > 0) {
        gemm_ws = alloc<uint8_t>(ws, c);
        QS_CUDA_CHECK(cudaMemset(gemm_ws, 0, ws));
      }
    }
    if (fp8) {
      // One cuBLASLt plan per linear shape, shared by the layers (weights are per-call pointers).
      size_t ws = 0;
      for (auto& d : layers)
        for (DevLinear* l : {&d.qkv, &d.o, &d.gate_up, &d.down}) {
          cuda::Fp8Gemm* g = nullptr;
          for (auto& e : fp8_gemms)
            if (e->n() == l->n && e->k() == l->k) g = e.get();
          if (!g) {
            fp8_gemms.push_back(std::make_unique<cuda::Fp8Gemm>(l->n, l->k, M));
            g = fp8_gemms.back().get();
            ws = std::max(ws, g->workspace_bytes());
          }
          l->gemm8 = g;
        }
      if (ws > 0) fp8_ws = alloc<uint8_t>(ws, c);
    }
    // Decode attention: graph buckets plan for max_context; eager steps plan for their batch (checked to fit).
    layout.page_size = opt.page_size;
    layout.num_kv_heads = NKV;
    layout.head_dim = D;
    layout.dtype = opt.kv_cache == "fp16"  ? KvDType::kFp16
                   : opt.kv_cache == "kv4" ? KvDType::kKv4
                   : quant                 ? KvDType::kKv4
                   : fp8                   ? KvDType::kFp8
                                           : KvDType::kFp16;
    for (int b = 1; b < S; b <<= 1) buckets.push_back(b);
    buckets.push_back(S);
    size_t dws = 0;
    for (int b : buckets) {
      const auto p = kernels::plan_decode(b, NH, layout, max_ctx, num_sms);
      bucket_plans[b] = p;
      dws = std::max(dws, p.workspace_bytes);
    }
    dec_ws_bytes = dws;
    if (dws > 0) dec_ws = alloc<uint8_t>(dws, c);
    const size_t cublas_ws_bytes = size_t(32) << 20;
    cublas_ws = alloc<uint8_t>(cublas_ws_bytes, c);
    QS_CUBLAS_CHECK(cublasSetWorkspace(cublas, cublas_ws, cublas_ws_bytes));
  }

  void alloc_pool() {
    QS_CUDA_CHECK(cudaDeviceSynchronize());
    size_t fr = 0, tot = 0;
    QS_CUDA_CHECK(cudaMemGetInfo(&fr, &tot));
    mem.gpu_total = int64_t(tot);
    mem.gpu_free_before_pool = int64_t(fr);
    const int64_t reserve = int64_t((1.0 - opt.gpu_memory_utilization) * double(tot));
    const int64_t budget = int64_t(fr) - reserve - (int64_t(64) << 20);  // 64 MiB for the CUDA graphs / cuBLAS
    const int64_t per_page = 2 * int64_t(L) * layout.page_bytes();
    int64_t pages = budget > 0 ? budget / per_page - 1 : 0;
    if (opt.max_num_pages > 0) pages = std::min(pages, opt.max_num_pages);
    QS_CHECK(pages >= 1) << "engine: no GPU memory left for the KV cache: " << fr / (1 << 20) << " MiB free after "
                         << (mem.weight_bytes + mem.activation_bytes + mem.workspace_bytes) / (1 << 20)
                         << " MiB of weights/activations/workspaces, " << reserve / (1 << 20)
                         << " MiB kept free by gpu_memory_utilization " << opt.gpu_memory_utilization << "; a page is "
                         << per_page << " bytes";
    num_pages = pages;
    scratch_page = int32_t(pages);
    kv = cuda::PagedKvCache(L, pages + 1, layout);
    mem.kv_pool_bytes = (pages + 1) * per_page;
    for (int l = 0; l < L; ++l) {
      QS_CUDA_CHECK(cudaMemset(kv.k_pool(l) + int64_t(scratch_page) * layout.page_bytes(), 0, layout.page_bytes()));
      QS_CUDA_CHECK(cudaMemset(kv.v_pool(l) + int64_t(scratch_page) * layout.page_bytes(), 0, layout.page_bytes()));
    }
    if (opt.verbose) {
      QS_LOG(INFO) << "engine: " << desc << " on " << gpu_name << ": weights " << mem.weight_bytes / (1 << 20)
                   << " MiB, activations " << mem.activation_bytes / (1 << 20) << " MiB, workspaces "
                   << mem.workspace_bytes / (1 << 20) << " MiB; KV pool = free " << fr / (1 << 20) << " MiB - (1 - "
                   << opt.gpu_memory_utilization << ") x total " << tot / (1 << 20) << " MiB -> " << pages
                   << " pages of " << opt.page_size << " tokens (" << mem.kv_pool_bytes / (1 << 20) << " MiB, "
                   << pages * opt.page_size << " tokens)";
    }
    QS_CUDA_CHECK(cudaEventCreate(&step_a));
    QS_CUDA_CHECK(cudaEventCreate(&step_b));
  }

  void finish_init() {
    check_linear_shapes();
    alloc_activations();
    tune_gemms();
    alloc_workspaces();
    alloc_pool();
  }

  // ------------------------------------------------------------------ launches
  template <typename F>
  void op(int cls, F&& f) {
    if (!profiling) {
      f();
      return;
    }
    while (ev_pool.size() < ev_used + 2) {
      cudaEvent_t e;
      QS_CUDA_CHECK(cudaEventCreate(&e));
      ev_pool.push_back(e);
    }
    cudaEvent_t a = ev_pool[ev_used++], b = ev_pool[ev_used++];
    QS_CUDA_CHECK(cudaEventRecord(a, stream));
    f();
    QS_CUDA_CHECK(cudaEventRecord(b, stream));
    evs.push_back({cls, a, b});
  }

  // The W4A8 GEMM call of `d` for m rows of the quantized activations (q8, sx, xsum, qsum) into y (+ y when
  // `residual`; `silu`: the SiLU*up epilogue, y [m, n/2]).
  kernels::QGemmParams quant_params(const DevLinear& d, int m, uint16_t* y, bool residual, bool silu) const {
    kernels::QGemmParams p = d.qp;
    p.m = m;
    p.x = q8;
    p.sx = sx;
    p.xsum = xsum;
    p.qsum = qsum;
    p.bias = d.bias;
    p.residual = residual ? y : nullptr;
    p.y = y;
    p.epilogue = silu ? kernels::QGemmEpilogue::kSiluMul : kernels::QGemmEpilogue::kLinear;
    p.workspace = gemm_ws;
    return p;
  }

  // y = x W^T (+ y when `residual`). `silu`: the W4A8 gate_up GEMM with its SiLU*up epilogue (y [m, n/2]).
  void gemm(const DevLinear& d, int m, const uint16_t* x16, uint16_t* y, bool residual, bool silu = false) {
    if (m == 0) return;
    op(kGemm, [&] {
      if (d.gemm8) {
        cuda::Fp8GemmCall c;
        c.m = m;
        c.x = x8;
        c.sx = sx8;
        c.w = d.w8;
        c.sw = d.sw;
        c.residual = residual ? y : nullptr;
        c.y = y;
        check(d.gemm8->run(c, fp8_ws, stream));
        if (d.bias) check(kernels::add_bias_f16(y, d.bias, m, d.n, stream));
      } else if (d.quant) {
        check(kernels::qgemm_run(quant_params(d, m, y, residual, silu), gemm_plan(d, m), stream, &d.prep));
      } else {
        const float alpha = 1.0f, beta = residual ? 1.0f : 0.0f;
        QS_CUBLAS_CHECK(cublasGemmEx(cublas, CUBLAS_OP_T, CUBLAS_OP_N, d.n, m, d.k, &alpha, d.w16, CUDA_R_16F, d.k,
                                     x16, CUDA_R_16F, d.k, &beta, y, CUDA_R_16F, d.n, CUBLAS_COMPUTE_32F,
                                     CUBLAS_GEMM_DEFAULT));
        if (d.bias) check(kernels::add_bias_f16(y, d.bias, m, d.n, stream));
      }
    });
  }

  kernels::QuantOut qout() const {
    kernels::QuantOut o;
    o.q = q8;
    o.scale = sx;
    o.xsum = variant == WeightFormat::kW4A8PerChannel ? xsum : nullptr;
    o.qsum = variant == WeightFormat::kW4A8G128 ? qsum : nullptr;
    return o;
  }

  void norm(const uint16_t* weight, int m) {
    op(kNormQuant, [&] {
      if (quant || fp8) {
        kernels::RmsNormQuantParams p;
        p.x = hidden;
        p.weight = weight;
        p.eps = float(cfg.rms_norm_eps);
        p.rows = m;
        p.cols = H;
        p.out = qout();
        p.fp8 = {x8, sx8};
        check(fp8 ? kernels::rmsnorm_quant_fp8(p, stream) : kernels::rmsnorm_quant(p, stream));
      } else {
        check(kernels::rmsnorm_f16(hidden, nullptr, m, H, weight, float(cfg.rms_norm_eps), xf16, stream));
      }
    });
  }

  // The whole step on `stream`: embeddings, every layer, then the lm_head over head_rows rows (no sync).
  void launch_layers(const StepShape& s, bool kv_copies) {
    const int m = s.m;
    const int32_t* md = meta_d;
    op(kOther, [&] { check(kernels::embedding_gather_f16(md + o_ids, m, embed, V, H, hidden, stream)); });
    const float scale = 1.0f / std::sqrt(float(D));
    for (int l = 0; l < L; ++l) {
      const DevLayer& d = layers[size_t(l)];
      norm(d.in_norm, m);
      gemm(d.qkv, m, xf16, qkv, false);
      op(kRopeKv, [&] {
        kernels::KvWriteParams p;
        p.qkv = qkv;
        p.qkv_stride = Q + 2 * KV;
        p.num_tokens = m;
        p.num_q_heads = NH;
        p.layout = layout;
        p.positions = md + o_pos;
        p.slot_mapping = md + o_slot;
        p.inv_freq = inv_freq;
        p.q_out = qr;
        p.k_out = kv_copies ? kr : nullptr;
        p.v_out = kv_copies ? vr : nullptr;
        p.k_pool = kv.k_pool(l);
        p.v_pool = kv.v_pool(l);
        check(kernels::kv_cache_write(p, stream));
        if (readback_self_kv && s.np > 0) {
          // Fake-quantized protocol: the prefill rows' own K/V become what the KV4 cache holds.
          kernels::KvReadbackParams r;
          r.layout = layout;
          r.num_tokens = m - s.nd;
          r.slot_mapping = md + o_slot + s.nd;
          r.k_pool = kv.k_pool(l);
          r.v_pool = kv.v_pool(l);
          r.k_out = kr + size_t(s.nd) * KV;
          r.v_out = vr + size_t(s.nd) * KV;
          check(kernels::kv_cache_readback(r, stream));
        }
      });
      op(kAttention, [&] {
        if (s.nd > 0) {
          kernels::DecodeParams p;
          p.q = qr;
          p.out = attn;
          p.k_pool = kv.k_pool(l);
          p.v_pool = kv.v_pool(l);
          p.layout = layout;
          p.block_table = md + o_bt;
          p.block_table_stride = stride;
          p.context_lens = md + o_ctx;
          p.batch = s.nd;
          p.num_q_heads = NH;
          p.softmax_scale = scale;
          check(kernels::run_decode(p, *s.dplan, dec_ws, stream));
        }
        if (s.np > 0) {
          kernels::PrefillParams p;
          p.q = qr + size_t(s.nd) * Q;
          p.k = kr + size_t(s.nd) * KV;
          p.v = vr + size_t(s.nd) * KV;
          p.out = attn + size_t(s.nd) * Q;
          p.cu_seqlens = md + o_cu;
          p.batch = s.np;
          p.max_q_len = s.max_q_len;
          p.num_q_heads = NH;
          p.num_kv_heads = NKV;
          p.head_dim = D;
          p.softmax_scale = scale;
          p.prefix_lens = md + o_prefix;
          p.k_pool = kv.k_pool(l);
          p.v_pool = kv.v_pool(l);
          p.layout = layout;
          p.block_table = md + o_bt + size_t(s.nd) * stride;
          p.block_table_stride = stride;
          check(kernels::run_prefill(p, stream));
        }
      });
      if (quant || fp8) {
        op(kNormQuant, [&] {
          kernels::ActQuantParams p;
          p.x = attn;
          p.rows = m;
          p.cols = Q;
          p.out = qout();
          p.fp8 = {x8, sx8};
          check(fp8 ? kernels::act_quant_fp8(p, stream) : kernels::act_quant(p, stream));
        });
      }
      gemm(d.o, m, attn, hidden, true);
      norm(d.post_norm, m);
      if (quant) {
        // W4A8: SiLU*up in the gate_up GEMM's epilogue (FP16 [m, I] into xf16), then the per-token quantization.
        gemm(d.gate_up, m, xf16, xf16, false, true);
        op(kNormQuant, [&] {
          kernels::ActQuantParams p;
          p.x = xf16;
          p.rows = m;
          p.cols = I;
          p.out = qout();
          check(kernels::act_quant(p, stream));
        });
      } else {
        gemm(d.gate_up, m, xf16, gate_up, false);
        op(kNormQuant, [&] {
          if (fp8) {
            kernels::SiluMulQuantParams p;
            p.gate_up = gate_up;
            p.rows = m;
            p.cols = I;
            p.fp8 = {x8, sx8};
            check(kernels::silu_mul_quant_fp8(p, stream));
          } else {
            check(kernels::silu_mul_f16(gate_up, m, I, xf16, stream));
          }
        });
      }
      gemm(d.down, m, xf16, hidden, true);
    }
  }

  // Final norm + lm_head (+ sampling) for rows out_rows[first .. first + rows), logits into `out` (default: the
  // logits buffer, which sampling reads).
  void launch_head(int first, int rows, bool greedy, float* out = nullptr) {
    if (!out) out = logits;
    if (rows == 0) return;
    op(kLmHead, [&] {
      check(kernels::rmsnorm_f16(hidden, meta_d + o_out + first, rows, H, final_norm, float(cfg.rms_norm_eps), head_in,
                                 stream));
      const float alpha = 1.0f, beta = 0.0f;
      QS_CUBLAS_CHECK(cublasGemmEx(cublas, CUBLAS_OP_T, CUBLAS_OP_N, V, rows, H, &alpha, lm_head, CUDA_R_16F, H,
                                   head_in, CUDA_R_16F, H, &beta, out, CUDA_R_32F, V, CUBLAS_COMPUTE_32F,
                                   CUBLAS_GEMM_DEFAULT));
    });
    if (greedy) {
      op(kSampling, [&] {
        kernels::SampleParams p;
        p.logits = logits;
        p.ld = V;
        p.rows = rows;
        p.vocab = V;
        p.temperature = reinterpret_cast<const float*>(samp_d);
        p.top_k = reinterpret_cast<const int32_t*>(samp_d + so_topk);
        p.top_p = reinterpret_cast<const float*>(samp_d + so_topp);
        p.seed = reinterpret_cast<const uint64_t*>(samp_d + so_seed);
        p.step = reinterpret_cast<const uint64_t*>(samp_d + so_step);
        p.out_token = sampled_d;
        check(kernels::sample(p, stream));
      });
    }
  }

  // ------------------------------------------------------------------ graphs
  cudaGraphExec_t capture(const StepShape& s) {
    cudaGraph_t g = nullptr;
    QS_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    try {
      launch_layers(s, false);
      launch_head(0, s.head_rows, true);
    } catch (...) {
      cudaStreamEndCapture(stream, &g);
      if (g) cudaGraphDestroy(g);
      throw;
    }
    QS_CUDA_CHECK(cudaStreamEndCapture(stream, &g));
    cudaGraphExec_t e = nullptr;
    const cudaError_t err = cudaGraphInstantiate(&e, g, 0);
    cudaGraphDestroy(g);
    QS_CHECK(err == cudaSuccess) << "engine: CUDA graph instantiation failed: " << cudaGetErrorString(err);
    return e;
  }

  // ------------------------------------------------------------------ execute
  model::ForwardResult execute(const model::ForwardBatch& b) {
    QS_CUDA_CHECK(cudaSetDevice(device));
    b.validate(opt.page_size, num_pages, V, max_ctx);
    const int ns = b.num_seqs(), nt = b.num_tokens();
    QS_CHECK(nt <= M) << "engine: batch of " << nt << " tokens exceeds max_batch_tokens " << M;
    QS_CHECK(ns <= S) << "engine: batch of " << ns << " sequences exceeds max_batch_seqs " << S;
    // The prefill kernel always sees a chunk's own K/V unquantized (the serving rule of executor.h); the
    // fake-quantized evaluation protocol (every key and value read back from the cache) is the CPU reference's.
    // The fake-quantized protocol (quantized_self_kv): a prefill's own K/V are read back from the KV4 cache
    // (kernels/kv_cache/kv_cache_readback.h); an FP16 cache holds them exactly (no-op); FP8 is not supported.
    QS_CHECK(!b.quantized_self_kv || b.is_decode() || layout.dtype != KvDType::kFp8)
        << "engine: quantized_self_kv (every K/V read back quantized) is not supported over an FP8 cache; "
           "evaluate with the serving rule (ppl --kv-protocol serving)";
    readback_self_kv = b.quantized_self_kv && layout.dtype == KvDType::kKv4;
    for (int s = 0; s < ns; ++s) {
      if (!b.need_output[size_t(s)] || b.all_logits) continue;
      const auto& sp = b.sampling[size_t(s)];
      QS_CHECK(sp.repetition_penalty == 1.0f)
          << "engine: repetition_penalty needs the token history, which ForwardBatch does not carry (sequence " << s
          << ")";
    }
    const bool use_graph = opt.cuda_graphs && !profiling && b.is_decode() && !b.all_logits;
    const int bucket = use_graph ? *std::lower_bound(buckets.begin(), buckets.end(), ns) : 0;
    // Programmatic dependent launch for this step's kernels (kernels/common/pdl.h): small decode steps (and their
    // graphs) by the measured rule unless QSERVE_PDL decides; other steps as QSERVE_PDL says (off by default).
    const bool decode = b.is_decode() && !b.all_logits;
    const kernels::PdlScope pdl(decode ? kernels::pdl_for_decode(use_graph ? bucket : ns) : kernels::pdl_enabled());

    // Device order: decode sequences (q_len == 1) first, then the prefill ones, each group in batch order.
    std::vector<int> order;
    for (int s = 0; s < ns; ++s)
      if (b.q_len(s) == 1) order.push_back(s);
    const int nd = int(order.size());
    for (int s = 0; s < ns; ++s)
      if (b.q_len(s) > 1) order.push_back(s);
    const int np = ns - nd;
    std::vector<int> dev_row0(static_cast<size_t>(ns));  // first device token row of each original sequence
    int32_t* h = meta_h;
    int row = 0, max_q = 0;
    h[o_cu] = 0;
    for (int i = 0; i < ns; ++i) {
      const int s = order[size_t(i)];
      const int n = b.q_len(s), start = b.cu_seqlens[size_t(s)], prefix = b.prefix_len(s);
      dev_row0[size_t(s)] = row;
      for (int t = 0; t < n; ++t) {
        const int pos = b.positions[size_t(start + t)];
        h[o_ids + size_t(row + t)] = b.token_ids[size_t(start + t)];
        h[o_pos + size_t(row + t)] = pos;
        h[o_slot + size_t(row + t)] = b.pages(s)[pos / opt.page_size] * opt.page_size + pos % opt.page_size;
      }
      row += n;
      h[o_ctx + size_t(i)] = b.context_lens[size_t(s)];
      const int npages = (b.context_lens[size_t(s)] + opt.page_size - 1) / opt.page_size;
      int32_t* bt = h + o_bt + size_t(i) * stride;
      for (int p = 0; p < stride; ++p) bt[p] = p < npages ? b.pages(s)[p] : scratch_page;
      if (i >= nd) {
        const int j = i - nd;
        h[o_prefix + size_t(j)] = prefix;
        h[o_cu + size_t(j) + 1] = h[o_cu + size_t(j)] + n;
        max_q = std::max(max_q, n);
      }
    }
    StepShape st;
    st.m = nt;
    st.nd = nd;
    st.np = np;
    st.max_q_len = max_q;
    // Output rows, in batch order.
    std::vector<int> out_seqs;
    std::vector<int32_t> head_rows;
    if (b.all_logits) {
      for (int s = 0; s < ns; ++s)
        for (int t = 0; t < b.q_len(s); ++t) head_rows.push_back(dev_row0[size_t(s)] + t);
    } else {
      for (int s = 0; s < ns; ++s)
        if (b.need_output[size_t(s)]) {
          out_seqs.push_back(s);
          head_rows.push_back(dev_row0[size_t(s)] + b.q_len(s) - 1);
        }
    }
    if (use_graph) {
      // Pad to the bucket: harmless rows (token 0 at position 0, not cached, context 1 in the scratch page).
      for (int r = ns; r < bucket; ++r) {
        h[o_ids + size_t(r)] = 0;
        h[o_pos + size_t(r)] = 0;
        h[o_slot + size_t(r)] = -1;
        h[o_ctx + size_t(r)] = 1;
        std::fill(h + o_bt + size_t(r) * stride, h + o_bt + size_t(r + 1) * stride, scratch_page);
      }
      for (int r = 0; r < bucket; ++r) h[o_out + size_t(r)] = r;
      st.m = bucket;
      st.nd = bucket;
      st.head_rows = bucket;
      st.dplan = &bucket_plans[bucket];
    } else {
      for (size_t r = 0; r < head_rows.size(); ++r) h[o_out + r] = head_rows[r];
      // Eager decode uses the plan of its graph bucket (made for max_context; valid for any batch up to the bucket),
      // so a graph replay and an eager step compute the same per-row results.
      if (nd > 0) st.dplan = &bucket_plans[*std::lower_bound(buckets.begin(), buckets.end(), nd)];
    }
    // Sampling settings of the head rows (greedy for rows no sequence reads: graph padding).
    const int head_n = use_graph ? st.head_rows : int(head_rows.size());
    if (!b.all_logits) {
      auto* temp = reinterpret_cast<float*>(samp_h);
      auto* topk = reinterpret_cast<int32_t*>(samp_h + so_topk);
      auto* topp = reinterpret_cast<float*>(samp_h + so_topp);
      auto* seed = reinterpret_cast<uint64_t*>(samp_h + so_seed);
      auto* stp = reinterpret_cast<uint64_t*>(samp_h + so_step);
      for (int r = 0; r < head_n; ++r) temp[r] = 0.0f, topk[r] = 0, topp[r] = 1.0f, seed[r] = 0, stp[r] = 0;
      for (size_t j = 0; j < out_seqs.size(); ++j) {
        const int s = out_seqs[j];
        const int r = use_graph ? s : int(j);
        const auto& sp = b.sampling[size_t(s)];
        temp[r] = sp.temperature > 0.0f ? sp.temperature : 0.0f;
        topk[r] = sp.top_k;
        topp[r] = sp.top_p;
        seed[r] = sp.seed;
        stp[r] = b.sample_step[size_t(s)];
      }
      QS_CUDA_CHECK(cudaMemcpyAsync(samp_d, samp_h, samp_bytes, cudaMemcpyHostToDevice, stream));
    }
    const size_t meta_bytes = (o_out + size_t(std::max<int>(int(head_rows.size()), st.m))) * 4;
    if (profiling) {
      evs.clear();
      ev_used = 0;
      QS_CUDA_CHECK(cudaEventRecord(step_a, stream));
    }
    QS_CUDA_CHECK(cudaMemcpyAsync(meta_d, meta_h, std::min(meta_bytes, meta_n * 4), cudaMemcpyHostToDevice, stream));

    model::ForwardResult res;
    res.tokens.assign(size_t(ns), -1);
    const int R_out = int(head_rows.size());
    if (use_graph) {
      auto it = graphs.find(bucket);
      if (it != graphs.end()) {
        QS_CUDA_CHECK(cudaGraphLaunch(it->second, stream));
      } else {
        // First step of this bucket: run it eagerly (kernel attributes get set outside any capture), then capture
        // the same launch sequence for the next steps.
        launch_layers(st, false);
        launch_head(0, st.head_rows, true);
        QS_CUDA_CHECK(cudaStreamSynchronize(stream));
        graphs[bucket] = capture(st);
      }
    } else {
      launch_layers(st, np > 0);
      if (!b.all_logits) launch_head(0, R_out, true);
    }

    if (b.all_logits && score_job) {
      run_scoring(*score_job, R_out);
      finish_profile();
      return res;
    }
    if (b.all_logits) {
      res.logits = Tensor(DType::F32, {int64_t(R_out), int64_t(V)});
      for (int first = 0; first < R_out; first += R) {
        const int rows = std::min(R, R_out - first);
        launch_head(first, rows, false);
        QS_CUDA_CHECK(cudaMemcpyAsync(res.logits.data<float>() + size_t(first) * V, logits, size_t(rows) * V * 4,
                                      cudaMemcpyDeviceToHost, stream));
      }
      QS_CUDA_CHECK(cudaStreamSynchronize(stream));
      finish_profile();
      return res;
    }
    const int n_out = int(out_seqs.size());
    // Row of the logits buffer for the j-th output sequence: j eagerly, the sequence index in a graph step.
    auto logit_row = [&](int j) { return use_graph ? out_seqs[size_t(j)] : j; };
    const int rows_needed = use_graph ? st.head_rows : R_out;
    QS_CUDA_CHECK(cudaMemcpyAsync(sampled_h, sampled_d, size_t(std::max(rows_needed, 1)) * 4, cudaMemcpyDeviceToHost,
                                  stream));
    if (b.return_logits) {
      res.logits = Tensor(DType::F32, {int64_t(n_out), int64_t(V)});
      if (!use_graph) {
        QS_CUDA_CHECK(cudaMemcpyAsync(res.logits.data<float>(), logits, size_t(n_out) * V * 4, cudaMemcpyDeviceToHost,
                                      stream));
      } else {
        for (int j = 0; j < n_out; ++j)
          QS_CUDA_CHECK(cudaMemcpyAsync(res.logits.data<float>() + size_t(j) * V, logits + size_t(logit_row(j)) * V,
                                        size_t(V) * 4, cudaMemcpyDeviceToHost, stream));
      }
    }
    QS_CUDA_CHECK(cudaStreamSynchronize(stream));
    for (int j = 0; j < n_out; ++j) res.tokens[size_t(out_seqs[size_t(j)])] = sampled_h[logit_row(j)];
    finish_profile();
    return res;
  }

  // score_window's tail: lm_head R rows at a time (into the kept buffer when keeping), each chunk scored at once.
  void run_scoring(const ScoreJob& job, int rows_out) {
    const int nl = int(job.labels->size());
    QS_CHECK(nl <= rows_out) << "engine: " << nl << " labels for a window of " << rows_out << " rows";
    if (nl > 0)
      QS_CUDA_CHECK(cudaMemcpyAsync(score_labels, job.labels->data(), size_t(nl) * 4, cudaMemcpyHostToDevice, stream));
    for (int first = 0; first < rows_out; first += R) {
      const int rows = std::min(R, rows_out - first);
      float* out = job.keep ? keep_buf + size_t(first) * V : logits;
      launch_head(first, rows, false, out);
      const int sr = std::min(rows, nl - first);
      if (sr <= 0) continue;
      op(kOther, [&] {
        kernels::LogitScoreParams p;
        p.logits = out;
        p.ld = V;
        p.ref_logits = job.ref ? job.ref->data + size_t(first) * V : nullptr;
        p.ref_ld = V;
        p.rows = sr;
        p.vocab = V;
        p.labels = score_labels + first;
        p.nll = score_nll + first;
        p.kl = score_kl + first;
        p.top1 = score_top1 + first;
        p.bad = score_bad + first;
        check(kernels::score_logits(p, stream));
      });
    }
    model::WindowScores& o = *job.out;
    o.nll.assign(size_t(nl), 0.0);
    std::vector<int32_t> bad(size_t(nl), 0);
    if (nl > 0) {
      QS_CUDA_CHECK(cudaMemcpyAsync(o.nll.data(), score_nll, size_t(nl) * 8, cudaMemcpyDeviceToHost, stream));
      QS_CUDA_CHECK(cudaMemcpyAsync(bad.data(), score_bad, size_t(nl) * 4, cudaMemcpyDeviceToHost, stream));
    }
    if (job.ref && nl > 0) {
      o.kl.assign(size_t(nl), 0.0);
      o.top1.assign(size_t(nl), 0);
      QS_CUDA_CHECK(cudaMemcpyAsync(o.kl.data(), score_kl, size_t(nl) * 8, cudaMemcpyDeviceToHost, stream));
      QS_CUDA_CHECK(cudaMemcpyAsync(o.top1.data(), score_top1, size_t(nl), cudaMemcpyDeviceToHost, stream));
    }
    QS_CUDA_CHECK(cudaStreamSynchronize(stream));
    kept_rows = job.keep ? rows_out : 0;
    for (int r = 0; r < nl; ++r)
      QS_CHECK(bad[size_t(r)] == 0) << "engine: " << bad[size_t(r)] << " non-finite logit(s) in row " << r
                                    << " of the window" << (job.ref ? " (model or reference)" : "");
  }

  model::WindowScores score_window(const model::ForwardBatch& b, const std::vector<int32_t>& labels,
                                   const model::KeptLogits* ref, bool keep) {
    QS_CHECK(b.all_logits) << "engine: score_window needs an all_logits batch";
    QS_CHECK(int64_t(labels.size()) <= int64_t(b.num_tokens()))
        << "engine: score_window got " << labels.size() << " labels for " << b.num_tokens() << " tokens";
    for (size_t r = 0; r < labels.size(); ++r)
      QS_CHECK(labels[r] >= 0 && labels[r] < V) << "engine: label " << labels[r] << " of row " << r
                                                << " outside the vocabulary of " << V;
    QS_CHECK(!keep || b.num_tokens() <= keep_rows) << "engine: keeping the logits of " << b.num_tokens()
                                                   << " rows needs keep_logits_rows >= that (it is " << keep_rows
                                                   << ")";
    if (ref) {
      QS_CHECK(ref->data != nullptr) << "engine: the reference kept no logits";
      QS_CHECK(ref->owner != self) << "engine: an executor cannot score against its own kept logits";
      QS_CHECK(ref->device == device) << "engine: reference logits on CUDA device " << ref->device
                                      << ", this executor runs on device " << device;
      QS_CHECK(ref->vocab == V && ref->rows >= int64_t(labels.size()))
          << "engine: reference logits [" << ref->rows << ", " << ref->vocab << "] do not cover " << labels.size()
          << " rows of vocabulary " << V;
    }
    model::WindowScores out;
    ScoreJob job{&labels, ref, keep, &out};
    kept_rows = 0;
    score_job = &job;
    try {
      execute(b);
    } catch (...) {
      score_job = nullptr;
      throw;
    }
    score_job = nullptr;
    return out;
  }

  void finish_profile() {
    if (!profiling) return;
    QS_CUDA_CHECK(cudaEventRecord(step_b, stream));
    QS_CUDA_CHECK(cudaEventSynchronize(step_b));
    double per[kNumClasses] = {};
    double sum = 0.0;
    for (const auto& e : evs) {
      float ms = 0.0f;
      QS_CUDA_CHECK(cudaEventElapsedTime(&ms, e.a, e.b));
      per[e.cls] += ms;
      sum += ms;
    }
    float total = 0.0f;
    QS_CUDA_CHECK(cudaEventElapsedTime(&total, step_a, step_b));
    last_prof.clear();
    for (int c = 0; c < kNumClasses; ++c) last_prof.emplace_back(kClassNames[c], per[c]);
    last_prof.emplace_back("kernels", sum);
    last_prof.emplace_back("step", double(total));
  }
};

CudaExecutor::CudaExecutor(const model::Model& model, const CudaExecutorOptions& opt) : impl_(new Impl) {
  impl_->cfg = model.config();
  impl_->opt = opt;
  impl_->self = this;
  impl_->check_shapes();
  impl_->init_device();
  impl_->load_model(model);
  impl_->finish_init();
}

CudaExecutor::CudaExecutor(const io::ModelConfig& config, const CudaExecutorOptions& opt,
                           const RandomWeightsOptions& rw)
    : impl_(new Impl) {
  impl_->cfg = config;
  impl_->opt = opt;
  impl_->self = this;
  impl_->check_shapes();
  impl_->init_device();
  impl_->random_model(rw);
  impl_->finish_init();
}

CudaExecutor::~CudaExecutor() = default;

std::string CudaExecutor::name() const { return "cuda " + impl_->desc + " (" + impl_->gpu_name + ")"; }
const io::ModelConfig& CudaExecutor::config() const { return impl_->cfg; }
model::KvPoolInfo CudaExecutor::pool() const {
  model::KvPoolInfo p;
  p.page_size = impl_->opt.page_size;
  p.num_pages = impl_->num_pages;
  p.dtype = impl_->layout.dtype;
  p.bytes_per_page = 2 * int64_t(impl_->L) * impl_->layout.page_bytes();
  return p;
}
int64_t CudaExecutor::max_context() const { return impl_->max_ctx; }
int32_t CudaExecutor::max_batch_tokens() const { return impl_->M; }
int32_t CudaExecutor::max_batch_seqs() const { return impl_->S; }
model::ForwardResult CudaExecutor::execute(const model::ForwardBatch& batch) { return impl_->execute(batch); }
model::WindowScores CudaExecutor::score_window(const model::ForwardBatch& batch, const std::vector<int32_t>& labels,
                                               const model::KeptLogits* ref, bool keep) {
  return impl_->score_window(batch, labels, ref, keep);
}
model::KeptLogits CudaExecutor::kept_logits() const {
  model::KeptLogits k;
  if (impl_->kept_rows == 0) return k;
  k.owner = this;
  k.data = impl_->keep_buf;
  k.rows = impl_->kept_rows;
  k.vocab = impl_->V;
  k.device = impl_->device;
  return k;
}
EngineDType CudaExecutor::dtype() const { return impl_->opt.dtype; }
void CudaExecutor::set_cuda_graphs(bool on) { impl_->opt.cuda_graphs = on; }
int CudaExecutor::num_graphs() const { return int(impl_->graphs.size()); }
CudaExecutor::Memory CudaExecutor::memory() const { return impl_->mem; }
void CudaExecutor::set_profiling(bool on) { impl_->profiling = on; }
std::vector<std::pair<std::string, double>> CudaExecutor::last_profile() const { return impl_->last_prof; }

}  // namespace qs::engine
