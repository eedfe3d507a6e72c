// Instantiates the Hopper wgmma GEMM (qgemm_sm90.cuh) for the two W4A8 weight formats, for every sm90 config of
// the table (qgemm_configs.def).
#include "kernels/gemm_w4a8/qgemm_sm90.cuh"

namespace qs::kernels::qgemm_detail {

#define QS_QGEMM_SM80(name, bn, bm, wn, wm)
#define QS_QGEMM_SM90(name, bm, mt)                                                                               \
  template Status launch_qgemm_sm90<0, kQGemm_##name>(const QGemmParams&, int, int, int32_t*, int*, int, int, int, const CUtensorMap&,           \
                                                      const CUtensorMap&, cudaStream_t);                          \
  template Status launch_qgemm_sm90<1, kQGemm_##name>(const QGemmParams&, int, int, int32_t*, int*, int, int, int, const CUtensorMap&,           \
                                                      const CUtensorMap&, cudaStream_t);
#include "kernels/gemm_w4a8/qgemm_configs.def"
#undef QS_QGEMM_SM80
#undef QS_QGEMM_SM90

}  // namespace qs::kernels::qgemm_detail
