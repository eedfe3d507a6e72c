// Instantiates the Hopper wgmma GEMM (gemm_w4a8/qgemm_sm90.cuh) for W8A8, every sm90 tile config.
#include "kernels/gemm_w4a8/qgemm_sm90.cuh"

namespace qs::kernels::qgemm_detail {

template Status launch_qgemm_sm90<2, 0>(const QGemmParams&, int, int, int32_t*, int*, cudaStream_t);
template Status launch_qgemm_sm90<2, 1>(const QGemmParams&, int, int, int32_t*, int*, cudaStream_t);
template Status launch_qgemm_sm90<2, 2>(const QGemmParams&, int, int, int32_t*, int*, cudaStream_t);
template Status launch_qgemm_sm90<2, 3>(const QGemmParams&, int, int, int32_t*, int*, cudaStream_t);

}  // namespace qs::kernels::qgemm_detail
