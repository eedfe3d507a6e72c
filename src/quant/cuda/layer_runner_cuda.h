// Calibration on the GPU: a CalibrationRunner (quant/qoq/calibration.h) that keeps the hidden states of every
// calibration window on the device and runs one decoder layer over them with cuBLAS (FP32 SGEMM for the linears,
// strided-batched SGEMM for causal GQA attention per window) and small kernels (RMSNorm, RoPE, softmax, SiLU,
// residual add), observing what the CPU runner observes: per-channel max|X| of the four linear inputs, post-RoPE key
// maxima, the GPTQ Hessians H = 2/n X^T X (cuBLAS DSYRK on the inputs converted to double: the CPU accumulates in
// double too), the kept sample rows and the SmoothAttention sample. Weights are read from the model's FP32 layer at
// each run (so the pipeline's dequantized-weight propagation works unchanged) and uploaded; peak GPU memory is one
// layer's weights, its Hessians, the hidden states and one chunk of windows' activations.
// Numerics: FP32 with a different summation order than the CPU backend; the tolerance is in
// tests/quant/gpu_calibration_gpu_test.cc.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "model/model.h"
#include "quant/qoq/calibration.h"

namespace qs::quant::qoq {

// True when built with CUDA and a GPU is present (else `why` says what is missing).
bool cuda_calibration_available(std::string* why = nullptr);

std::unique_ptr<CalibrationRunner> make_cuda_layer_runner(model::Model& model, const CalibrationSet& set);

// Largest device memory in use (total - free, all processes) seen at the runner's and GPTQ's sampling points, bytes
// (0 when nothing ran on the GPU).
int64_t cuda_peak_memory_bytes();
void note_cuda_memory();  // samples the device memory in use now

}  // namespace qs::quant::qoq
