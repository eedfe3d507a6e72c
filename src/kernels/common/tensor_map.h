// Host side of the TMA (cp.async.bulk.tensor) loads of the sm_90a kernels: encodes a tiled tensor map through
// cuTensorMapEncodeTiled, obtained once with cudaGetDriverEntryPointByVersion (no libcuda link). Device side:
// kernels/common/tma.h.
#pragma once

#include <cuda.h>

#include <cstdint>

#include "core/status.h"

namespace qs::kernels {

// A rank-`rank` (1..5) tensor at `ptr`: dims[0] innermost (contiguous) elements; strides_bytes[i] is the byte
// stride of dims[i + 1] (rank - 1 entries, multiples of 16); box[i] elements per load along dims[i]. No
// interleave, element strides 1, L2 promotion 256 B, out-of-bounds elements read as zeros. `who` prefixes errors.
Status encode_tensor_map(CUtensorMap* map, CUtensorMapDataType type, int rank, const void* ptr, const uint64_t* dims,
                         const uint64_t* strides_bytes, const uint32_t* box, CUtensorMapSwizzle swizzle,
                         const char* who);

}  // namespace qs::kernels
