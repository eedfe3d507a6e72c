// Instantiates the INT8 tensor-core GEMM (gemm_w4a8/qgemm_kernel.cuh) for W8A8 (INT8 weights), every tile config.
// The API is gemm_w4a8/qgemm.h with WeightFormat::kW8A8.
#include "kernels/gemm_w4a8/qgemm_kernel.cuh"

namespace qs::kernels::qgemm_detail {

template Status launch_qgemm<2, 0>(const QGemmParams&, int, int, int32_t*, int*, cudaStream_t);
template Status launch_qgemm<2, 1>(const QGemmParams&, int, int, int32_t*, int*, cudaStream_t);
template Status launch_qgemm<2, 2>(const QGemmParams&, int, int, int32_t*, int*, cudaStream_t);

}  // namespace qs::kernels::qgemm_detail
