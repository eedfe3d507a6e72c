// Instantiates the INT8 tensor-core GEMM (qgemm_kernel.cuh) for the two W4A8 weight formats, for every sm80 config
// of the table (qgemm_configs.def).
#include "kernels/gemm_w4a8/qgemm_kernel.cuh"

namespace qs::kernels::qgemm_detail {

#define QS_QGEMM_SM80(name, bn, bm, wn, wm)                                                                   \
  template Status launch_qgemm<0, kQGemm_##name>(const QGemmParams&, int, int, int32_t*, int*, cudaStream_t); \
  template Status launch_qgemm<1, kQGemm_##name>(const QGemmParams&, int, int, int32_t*, int*, cudaStream_t);
#define QS_QGEMM_SM90(name, bm, mt)
#include "kernels/gemm_w4a8/qgemm_configs.def"
#undef QS_QGEMM_SM80
#undef QS_QGEMM_SM90

}  // namespace qs::kernels::qgemm_detail
