// Instantiates the Hopper wgmma GEMM (qgemm_sm90.cuh) for the two W4A8 weight formats, every sm90 tile config.
#include "kernels/gemm_w4a8/qgemm_sm90.cuh"

namespace qs::kernels::qgemm_detail {

#define QS_QGEMM_SM90_INSTANTIATE(V, CONFIG) \
  template Status launch_qgemm_sm90<V, CONFIG>(const QGemmParams&, int, int, int32_t*, int*, cudaStream_t);
QS_QGEMM_SM90_INSTANTIATE(0, 0)
QS_QGEMM_SM90_INSTANTIATE(0, 1)
QS_QGEMM_SM90_INSTANTIATE(0, 2)
QS_QGEMM_SM90_INSTANTIATE(1, 0)
QS_QGEMM_SM90_INSTANTIATE(1, 1)
QS_QGEMM_SM90_INSTANTIATE(1, 2)
QS_QGEMM_SM90_INSTANTIATE(0, 3)
QS_QGEMM_SM90_INSTANTIATE(1, 3)
#undef QS_QGEMM_SM90_INSTANTIATE

}  // namespace qs::kernels::qgemm_detail
