// QoQ's output-preserving weight transformations (QSERVE.md section 2, steps 1-4), applied in place to the FP32
// weights of a Llama-family model: RMSNorm folding, residual-stream Hadamard rotation, per-head Hadamard between
// v_proj and o_proj, SmoothAttention, down_proj smoothing and activation-aware channel reordering. Each one
// leaves the model's function unchanged in exact arithmetic (derivations in docs/QOQ.md). Convention: a linear
// computes y = x W^T with W [out, in] (rows = output channels, columns = input channels). The model is seen
// through ModelWeights: pointers to the model's own Tensor objects, so edits (and untying, which replaces the
// lm_head tensor) reach the model without copies. The statistics these transformations need (max|X|, post-RoPE
// key maxima) come from calibration.h; this file is pure weight arithmetic.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "io/model_config.h"
#include "quant/hadamard.h"

namespace qs::quant::qoq {

// One decoder layer's weights (F32). Bias pointers may be null or point to undefined tensors (no bias).
struct LayerWeights {
  Tensor* input_norm = nullptr;  // [hidden]
  Tensor* post_norm = nullptr;   // [hidden] (post_attention_layernorm)
  Tensor *q = nullptr, *k = nullptr, *v = nullptr, *o = nullptr;  // [q_size, hidden] [kv_size, hidden] x2, [hidden, q_size]
  Tensor *gate = nullptr, *up = nullptr, *down = nullptr;         // [inter, hidden] x2, [hidden, inter]
  Tensor *q_bias = nullptr, *k_bias = nullptr, *v_bias = nullptr; // [q_size] / [kv_size] (Qwen2)
};
struct ModelWeights {
  io::ModelConfig config;
  Tensor* embed = nullptr;       // [vocab, hidden]
  Tensor* final_norm = nullptr;  // [hidden]
  Tensor* lm_head = nullptr;     // [vocab, hidden]; may share storage with *embed (tied)
  std::vector<LayerWeights> layers;
};

// Checks that every pointer is set and every shape matches the config (throws qs::Error naming the tensor).
void check_weights(const ModelWeights& m);

// ---- step 1: block-input rotation -------------------------------------------------------------------------
// Gives lm_head its own storage when it shares it with the embeddings. Returns true if it did.
bool untie_embeddings(ModelWeights& m);
// Folds every RMSNorm weight into the linears that read its output (input_norm -> q/k/v columns, post_norm ->
// gate/up columns, final_norm -> lm_head columns) and sets the norm weights to 1. Unties first.
void fold_norms(ModelWeights& m);
// Rotates the residual stream by the normalized Hadamard matrix H of order hidden: embeddings E <- E H, o/down outputs
// W <- H^T W, q/k/v/gate/up/lm_head inputs W <- W H. Requires folded norms (all norm weights equal to 1).
void rotate_residual(ModelWeights& m, const Hadamard& h);
// Per-head rotation by the normalized Hadamard matrix Hd of order head_dim: each KV head's v_proj rows W <- Hd^T W (and
// bias b <- b Hd); each query head's block of o_proj columns W <- W Hd.
void rotate_value_heads(ModelWeights& m, const Hadamard& hd);

// The same steps for one layer (streaming quantization: each layer is transformed when it is loaded) and for the
// head (final norm folded into lm_head). The whole-model versions above are these, applied tensor by tensor in the
// same order, so both give bit-identical weights.
void fold_norms_layer(LayerWeights& l);
void fold_norm_head(Tensor* final_norm, Tensor* lm_head);
void rotate_residual_layer(LayerWeights& l, const Hadamard& h);  // requires the layer's norms folded
void rotate_value_heads_layer(LayerWeights& l, const Hadamard& hd);

// ---- step 2: channel reordering (permutations: new index i takes old index perm[i]) -------------------------
// Ascending argsort (stable) of a statistic: the permutation that sorts channels by it.
std::vector<int32_t> ascending_order(const float* stat, int64_t n);
// Permutes the down_proj input channels: gate/up rows and down columns.
void reorder_down(LayerWeights& l, const std::vector<int32_t>& perm);
// Permutes channels within each KV head (perms: num_kv_heads permutations of head_dim): v_proj rows (+ bias)
// and the o_proj columns of every query head of that KV head's group.
void reorder_value_heads(LayerWeights& l, const io::ModelConfig& c, const std::vector<std::vector<int32_t>>& perms);

// ---- step 3: SmoothAttention ------------------------------------------------------------------------------
// lambda [num_kv_heads * head_dim] from the post-RoPE key maxima kmax (same shape): lambda_j = m_j^alpha with
// m_j = max(kmax_j, kmax_{j +- D/2}) so rotate-half pairs share it; a zero maximum gives lambda 1.
std::vector<float> smooth_attention_scales(const std::vector<float>& kmax, const io::ModelConfig& c, float alpha);
// The same with one exponent per KV head (alpha [num_kv_heads], each in [0, 1]).
std::vector<float> smooth_attention_scales(const std::vector<float>& kmax, const io::ModelConfig& c,
                                           const std::vector<float>& alpha);
// q_proj rows (+ bias) of each query head times its KV head's lambda; k_proj rows (+ bias) divided by lambda.
void apply_smooth_attention(LayerWeights& l, const io::ModelConfig& c, const std::vector<float>& lambda);

// ---- step 4: down_proj smoothing ----------------------------------------------------------------------------
// s_j = xmax_j^a / wmax_j^b with wmax_j = max_o |down[o, j]|; channels with a zero maximum get s 1; s is clamped
// to [1e-5, 1e5].
std::vector<float> smooth_down_scales(const std::vector<float>& xmax, const Tensor& down, float a, float b);
// up_proj rows divided by s, down_proj columns multiplied by s.
void apply_smooth_down(LayerWeights& l, const std::vector<float>& s);

// ---- matrix helpers (public for tests) ----------------------------------------------------------------------
// Every group of n = h.size() consecutive columns of w [rows, cols] (or of a 1-D w) becomes (that block) x H.
void right_multiply_blocks(Tensor& w, const Hadamard& h);
// Every group of n consecutive rows of w [rows, cols] becomes H^T x (that block).
void left_multiply_blocks(Tensor& w, const Hadamard& h);

}  // namespace qs::quant::qoq
