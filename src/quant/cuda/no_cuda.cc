// Builds without CUDA: the GPU calibration entry points say so (quant/cuda/*.h); nothing here computes.
#ifndef QSERVE_HAVE_CUDA
#include "core/error.h"
#include "quant/cuda/gptq_cuda.h"
#include "quant/cuda/layer_runner_cuda.h"

namespace qs::quant {
Tensor gptq_cuda(const Tensor&, const std::vector<double>&, GptqRounding&, const GptqOptions&) {
  QS_FAIL() << "GPTQ on the GPU: this qserve was built without CUDA";
  return Tensor();
}
namespace qoq {
bool cuda_calibration_available(std::string* why) {
  if (why) *why = "this qserve was built without CUDA";
  return false;
}
std::unique_ptr<CalibrationRunner> make_cuda_layer_runner(model::Model&, const CalibrationSet&) {
  QS_FAIL() << "calibration on the GPU: this qserve was built without CUDA";
  return nullptr;
}
int64_t cuda_peak_memory_bytes() { return 0; }
void note_cuda_memory() {}
}  // namespace qoq
}  // namespace qs::quant
#endif
