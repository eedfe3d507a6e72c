// Host-side weight repacking from the canonical quantized layouts (formats/formats.h) to the fragment order the
// INT8 tensor-core GEMM loads (qgemm.h). Each lane's one 16-byte shared-memory load is exactly its mma.sync
// A-operand fragments (QServe's "compute-aware reordering"), weights being the A operand (output channels on the
// mma M side, 16 rows a tile). With g = lane/4, t = lane%4:
//   W4 (repack_w4): tile (nt, kg) covers rows 16nt..16nt+15, k in [128kg, 128kg+128), 1024 bytes at offset
//     (nt * k/128 + kg) * 1024, as [chunk c 0..1][lane 0..31][word j 0..3]. Word j of chunk c covers
//     k0 = 128kg + 32(2c + j/2) + 16(j%2) + 4t; its byte b holds W[16nt+g][k0+b] in the low nibble and
//     W[16nt+g+8][k0+b] in the high nibble. (w & 0x0f0f0f0f) and ((w >> 4) & 0x0f0f0f0f) are then the A
//     registers (a0,a1) for j even and (a2,a3) for j odd, of k32 step 2c + j/2.
//   W8 (repack_w8): tile (nt, kg) is 2048 bytes at (nt * k/128 + kg) * 2048, as [step s 0..3][lane][word j];
//     word j holds W[16nt+g+8(j%2)][128kg + 32s + 16(j/2) + 4t + b] in byte b (a0..a3 of k32 step s).
//   g128 scales (repack_s2zn): u16 [k/128, n], value s2[n][g] | uint8(zn[n][g]) << 8.
#pragma once

#include <cstdint>
#include <vector>

namespace qs::kernels {

// q: canonical packed U8 [n, k/2] (low nibble = even k). n % 16 == 0, k % 128 == 0 (throws qs::Error).
std::vector<uint8_t> repack_w4(const uint8_t* q, int64_t n, int64_t k);
// q: INT8 [n, k] row-major.
std::vector<uint8_t> repack_w8(const int8_t* q, int64_t n, int64_t k);
// s2: U8 [n, k/128], zn: I8 [n, k/128].
std::vector<uint16_t> repack_s2zn(const uint8_t* s2, const int8_t* zn, int64_t n, int64_t k);

}  // namespace qs::kernels
