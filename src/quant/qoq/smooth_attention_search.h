// SmoothAttention with a searched strength (docs/QOQ.md, step 3): per decoder layer, and per KV head, the exponent
// alpha of lambda_j = max(m_j, m_{j+D/2})^alpha is chosen from a grid by the error of the attention OUTPUT with
// a KV4 cache on a calibration sample (AttentionSample, calibration.h): queries unquantized, keys after RoPE
// divided by lambda and quantized per token per KV head (formats.h quantize_kv4_group), values quantized the
// same way, causal softmax attention, squared error against the FP attention output.
//
// Why per KV head is exact to search independently: the output of query head h depends only on its KV head's
// keys and values, and KV4 groups are (token, KV head), so the total error is a sum of per-KV-head terms, each a
// function of that head's lambda only. The RoPE-pair and GQA constraints come from smooth_attention_scales
// (pairs share lambda; one lambda per KV head serves every query head of its group).
//
// Evaluation trick: with q' = q * lambda and k' = k / lambda, q' . deq(quant(k')) = q . (lambda * deq(quant(k'))),
// so each candidate is the same attention with "effective keys" lambda * deq(quant(k / lambda)) and the
// original queries.
#pragma once

#include <cstdint>
#include <vector>

#include "io/model_config.h"
#include "quant/qoq/calibration.h"

namespace qs::quant::qoq {

// Squared attention-output error per KV head (summed over the sample's windows, queries, the group's query heads
// and head_dim), of the KV4 attention with keys scaled by 1/lambda (lambda [kv_size]; empty: 1) against the FP
// attention on the same sample. quant_keys / quant_values select what is quantized (both for the search; one at a
// time for diagnostics). value_scale [kv_size] (empty: 1): values divided by it before KV4 and multiplied back
// after (per-channel value smoothing, a diagnostic; the fold would go into v_proj rows / o_proj columns).
std::vector<double> kv4_attention_error(const AttentionSample& s, const io::ModelConfig& c,
                                        const std::vector<float>& lambda, bool quant_keys = true,
                                        bool quant_values = true, const std::vector<float>& value_scale = {});

// Several kv4_attention_error evaluations of one sample with the FP reference computed once (equal, bit for bit,
// to calling kv4_attention_error for each probe).
struct Kv4AttentionProbe {
  std::vector<float> lambda;  // key scales [kv_size] or empty
  bool quant_keys = true, quant_values = true;
  std::vector<float> value_scale;  // [kv_size] or empty
};
std::vector<std::vector<double>> kv4_attention_errors(const AttentionSample& s, const io::ModelConfig& c,
                                                      const std::vector<Kv4AttentionProbe>& probes);

// The squared norm of the FP attention output per KV head (to turn errors into relative errors).
std::vector<double> fp_attention_norm(const AttentionSample& s, const io::ModelConfig& c);

struct SmoothAttentionChoice {
  std::vector<float> alpha;   // [num_kv_heads] the chosen exponent of each KV head
  std::vector<float> lambda;  // [kv_size] the resulting scales (smooth_attention_scales per head)
  // err[i][g]: squared error of grid point i for KV head g (the grid in the order given).
  std::vector<std::vector<double>> err;
  double chosen_err = 0.0;  // total error of the choice
  double fp_norm = 0.0;     // squared norm of the FP attention output on the sample (sum of fp_attention_norm)
};

// The default grid: 0, 0.05, ..., 1 (21 points; i / 20, so 0.5 is exact).
std::vector<float> default_alpha_grid();

// Searches alpha over `grid` by kv4_attention_error; kmax [kv_size] are the post-RoPE key maxima (over all
// calibration tokens). per_head: each KV head takes its best grid point; else one alpha for the layer (the best
// total). Ties go to the smaller alpha (grid order).
SmoothAttentionChoice search_smooth_attention(const AttentionSample& s, const std::vector<float>& kmax,
                                              const io::ModelConfig& c, const std::vector<float>& grid,
                                              bool per_head = true);

}  // namespace qs::quant::qoq
