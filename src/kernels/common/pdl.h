// Programmatic dependent launch (PDL, sm_90): a kernel launched by launch_pdl may begin while the kernel before it
// in the stream is still running, so its launch, its CTAs' start-up and any work that depends on no earlier kernel
// (a GEMM's first weight tiles, prefetched into L2) overlap the previous kernel's tail instead of following it.
// Works inside CUDA graph capture (the graph keeps the programmatic edges).
//
// OFF BY DEFAULT; QSERVE_PDL=1 in the environment (or set_pdl_enabled) turns it on for every kernel of a model
// step. Measured on an H200 (Llama-3-8B W4A8KV4, BENCHMARKS.md "Programmatic dependent launch"), against the engine
// before PDL in the same call: 3.3% more output tokens/s at batch 16 but 2.7% fewer at batch 64 (within 0.2% of
// PDL off at batch 256-1024, another call), so it is an opt-in until the trigger placement below is tuned.
// Decode attention's merge kernel (launch_pdl with always_pdl: one operation) uses it always, as it did before the
// rest of the step could.
//
// The contract of every kernel launched this way: before pdl_wait() it reads only memory that no kernel of the
// stream writes (weights, constant tables) and writes no global memory; pdl_wait() returns once the previous grid
// has completed and its writes are visible to this grid (so, transitively, every earlier kernel of the stream).
// pdl_launch_dependents() lets the next PDL kernel of the stream start launching once every CTA of this grid has
// called it (the first call of a CTA counts) or exited: its CTAs take the SM resources this grid frees and wait in
// their own pdl_wait(). Without PDL both are no-ops.
//
// Where a kernel triggers is a placement decision. The dependent's CTAs go to the SMs free at that moment: a
// dependent of many small CTAs launched early crowds onto the few SMs the previous grid leaves free and runs
// unbalanced. Here: the quantization kernels, whose dependent is a GEMM (one CTA per SM), trigger right after their
// wait; the GEMMs (and decode attention, for its merge kernel) trigger after their main loop; the other kernels do
// not trigger (their dependents launch at their completion). Every kernel triggering at its start instead measured
// 5% faster at batch 16 but 3% slower at batch 64 than PDL off.
#pragma once

#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>
#include <utility>

namespace qs::kernels {

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

namespace detail {
inline bool& pdl_state() {
  static bool on = [] {
    const char* e = std::getenv("QSERVE_PDL");
    return e && std::strcmp(e, "1") == 0;
  }();
  return on;
}
}  // namespace detail

// True when QSERVE_PDL=1 (read once per process, at the first launch) or after set_pdl_enabled(true).
inline bool pdl_enabled() { return detail::pdl_state(); }
// For tests and benchmarks: PDL on or off for the launches that follow (not synchronized with other host threads).
inline void set_pdl_enabled(bool on) { detail::pdl_state() = on; }

// A launch's shape; cluster_z > 1 also makes (1, 1, cluster_z) thread-block clusters; always_pdl: PDL whatever
// QSERVE_PDL says (a kernel whose predecessor belongs to the same operation).
struct LaunchShape {
  dim3 grid;
  dim3 block;
  size_t smem = 0;
  cudaStream_t stream = nullptr;
  unsigned cluster_z = 1;
  bool always_pdl = false;
};

// kernel<<<grid, block, smem, stream>>>(args...), with programmatic stream serialization when pdl_enabled() or
// always_pdl. The kernel must keep the contract above. Returns the launch's error (callers check cudaGetLastError).
template <typename... KArgs, typename... Args>
cudaError_t launch_pdl(const LaunchShape& l, void (*kernel)(KArgs...), Args&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = l.grid;
  cfg.blockDim = l.block;
  cfg.dynamicSmemBytes = l.smem;
  cfg.stream = l.stream;
  cudaLaunchAttribute attr[2];
  unsigned n = 0;
  if (l.always_pdl || pdl_enabled()) {
    attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[n].val.programmaticStreamSerializationAllowed = 1;
    ++n;
  }
  if (l.cluster_z > 1) {
    attr[n].id = cudaLaunchAttributeClusterDimension;
    attr[n].val.clusterDim.x = 1;
    attr[n].val.clusterDim.y = 1;
    attr[n].val.clusterDim.z = l.cluster_z;
    ++n;
  }
  cfg.attrs = n ? attr : nullptr;
  cfg.numAttrs = n;
  return cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
}

}  // namespace qs::kernels
