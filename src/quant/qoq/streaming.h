// Streaming QoQ: the pipeline of pipeline.h with bounded host memory, for checkpoints larger than RAM (Llama-3-8B
// is 32 GB in FP32). The FP model is never loaded whole: the embeddings, final norm and lm_head are read once
// (transformed, kept for the checkpoint), and each decoder layer's weights are read from the safetensors shards
// (mmap) when the layer is processed, converted to FP32, transformed (the per-layer rotations of transforms.h),
// calibrated and quantized through the same quantize_layer() as run_qoq, then freed; only the packed W4 linears
// (and the layer's norms and biases) stay. The calibration runs on a one-layer "shell" model whose layer 0 is
// replaced for every layer, so every computation is the one run_qoq does: the result is bit-identical to
// Model::load + run_qoq + make_checkpoint (tests/quant/streaming_quantize_test.cc).
//
// Host memory: embeddings + lm_head (F32 while quantizing), the calibration hidden states (samples x len x hidden
// F32: 2 GB for Llama-3-8B at 128 x 1024), one layer in FP32 (0.9 GB for 8B) and its Hessians (double), and the
// packed W4 weights of the finished layers (~0.5 byte per parameter).
//
// Resume: with a state folder (StreamingOptions::state_dir), every finished layer is saved there before the next
// one starts: its quantized tensors (layer-<i>.safetensors), and (at most every save_every_seconds) the calibration
// hidden states at the boundary (hidden-<i+1>.bin) and state.json (settings, source identity, the reports of the finished layers), each written
// to a temporary file and renamed, state.json last. A later run with the same settings, calibration and source
// checkpoint continues at the first unfinished layer and gives the same checkpoint as an uninterrupted run; a
// state from other settings or another source is an error naming the difference (or discarded with fresh=true).
#pragma once

#include <string>

#include "backends/backend.h"
#include "quant/qoq/pipeline.h"

namespace qs::quant::qoq {

struct StreamingOptions {
  std::string state_dir;  // resume state folder ("" : none kept)
  bool fresh = false;     // discard a state folder that does not match instead of failing
  // The hidden states (2 GB for Llama-3-8B at 128 x 1024) and state.json are saved after a layer only when this
  // many seconds have passed since the last save (and always after the last layer and at the stop hook); each
  // layer's quantized tensors are saved every time. 0: after every layer. A resumed run restarts after the last
  // saved boundary (the layers after it are recomputed, with the same result).
  double save_every_seconds = 0.0;
  // Test hook (and QSERVE_QUANTIZE_STOP_AFTER_LAYER in the CLI): throw qs::Error after this many layers are
  // finished and saved (-1: never).
  int stop_after_layers = -1;
};

struct StreamingResult {
  QoqResult result;  // linears without their `dequant` tensors (freed after each layer)
  FpTensors fp;
  int resumed_layers = 0;  // layers taken from the state folder
};

// Quantizes the Hugging Face checkpoint in `model_dir` (config.json + safetensors) layer by layer on `backend`.
StreamingResult run_qoq_streaming(const std::string& model_dir, const backends::Backend& backend,
                                  const CalibrationSet& calib, const QoqOptions& opt, const StreamingOptions& sopt);

// Checks, before any work, that a config can be quantized to `variant` and run by the kernels: every linear's K
// (hidden, q_size, intermediate) a multiple of 128 and N a multiple of 16 (the W4A8 GEMM), head_dim even (RoPE
// pairs), and Hadamard matrices of order hidden_size and head_dim constructible when rotating. Throws qs::Error
// naming the dimension.
void check_quantizable(const io::ModelConfig& c, const QoqOptions& opt);

// Peak resident host memory of this process so far (getrusage), bytes.
int64_t peak_host_memory_bytes();

}  // namespace qs::quant::qoq
