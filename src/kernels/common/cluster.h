// PTX wrappers for Hopper thread-block clusters (sm_90): the cluster barrier (arrive with release, wait with
// acquire; non-.aligned, so divergent threads may call them) and distributed shared memory (map a CTA-local
// shared address to a peer CTA's, 16-byte loads from it). Device-only; include from .cu files.
#pragma once

#include <cstdint>

namespace qs::kernels::ptx {

__device__ __forceinline__ void cluster_arrive() { asm volatile("barrier.cluster.arrive.release;\n" ::: "memory"); }
__device__ __forceinline__ void cluster_wait() { asm volatile("barrier.cluster.wait.acquire;\n" ::: "memory"); }
// Every thread of every CTA in the cluster (exited threads excepted) must call it the same number of times.
__device__ __forceinline__ void cluster_sync() {
  cluster_arrive();
  cluster_wait();
}
// The shared::cluster address of `smem_addr` (a shared::cta address) in the CTA of cluster rank `rank`.
__device__ __forceinline__ uint32_t dsmem_map(uint32_t smem_addr, uint32_t rank) {
  uint32_t r;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(r) : "r"(smem_addr), "r"(rank));
  return r;
}
__device__ __forceinline__ int4 dsmem_ld128(uint32_t cluster_addr) {
  int4 v;
  asm volatile("ld.shared::cluster.v4.s32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "r"(cluster_addr)
               : "memory");
  return v;
}

}  // namespace qs::kernels::ptx
