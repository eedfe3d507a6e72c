// Instantiates the INT8 tensor-core GEMM (gemm_w4a8/qgemm_kernel.cuh) for W8A8 (INT8 weights), for every sm80
// config of the table (gemm_w4a8/qgemm_configs.def). The API is gemm_w4a8/qgemm.h with WeightFormat::kW8A8.
#include "kernels/gemm_w4a8/qgemm_kernel.cuh"

namespace qs::kernels::qgemm_detail {

#define QS_QGEMM_SM80(name, bn, bm, wn, wm) \
  template Status launch_qgemm<2, kQGemm_##name>(const QGemmParams&, int, int, int32_t*, int*, cudaStream_t);
#define QS_QGEMM_SM90(name, bm, mt)
#include "kernels/gemm_w4a8/qgemm_configs.def"
#undef QS_QGEMM_SM80
#undef QS_QGEMM_SM90

}  // namespace qs::kernels::qgemm_detail
