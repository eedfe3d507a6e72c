// Instantiates the INT8 tensor-core GEMM (qgemm_kernel.cuh) for the two W4A8 weight formats, every tile config.
#include "kernels/gemm_w4a8/qgemm_kernel.cuh"

namespace qs::kernels::qgemm_detail {

#define QS_QGEMM_INSTANTIATE(V, CONFIG) \
  template Status launch_qgemm<V, CONFIG>(const QGemmParams&, int, int, int32_t*, int*, cudaStream_t);
QS_QGEMM_INSTANTIATE(0, 0)
QS_QGEMM_INSTANTIATE(0, 1)
QS_QGEMM_INSTANTIATE(0, 2)
QS_QGEMM_INSTANTIATE(1, 0)
QS_QGEMM_INSTANTIATE(1, 1)
QS_QGEMM_INSTANTIATE(1, 2)
#undef QS_QGEMM_INSTANTIATE

}  // namespace qs::kernels::qgemm_detail
