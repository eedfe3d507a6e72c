// Programmatic dependent launch (PDL, sm_90): a kernel launched by launch_pdl may begin while the kernel before it
// in the stream is still running, so its launch, its CTAs' start-up and any work that depends on no earlier kernel
// (a GEMM's first weight tiles, prefetched into L2) overlap the previous kernel's tail instead of following it.
// Works inside CUDA graph capture (the graph keeps the programmatic edges).
//
// By default the engine uses it for decode steps of at most kPdlAutoMaxDecodeBatch sequences only (measured faster
// there and slower from batch 64; BENCHMARKS.md "Programmatic dependent launch"): it opens a PdlScope around those
// steps (and their graph capture). QSERVE_PDL=1 turns it on for every kernel of every step, QSERVE_PDL=0 off.
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

// The engine's rule when QSERVE_PDL is unset: PDL for the kernels of decode steps of at most this many sequences
// (their graphs are captured with it), not for larger or mixed steps. Measured on an H200 (BENCHMARKS.md
// "Programmatic dependent launch"): output tokens/s with PDL vs without, two rounds, Llama-3-8B W4A8KV4: batch 8
// +4.7-5.7%, 16 +2.3-2.9%, 32 +0.1-1.4%, 64 -2.7-3.4%.
inline constexpr int kPdlAutoMaxDecodeBatch = 32;

namespace detail {
enum class PdlMode { kOff, kOn, kAuto };
inline PdlMode& pdl_mode() {
  static PdlMode mode = [] {
    const char* e = std::getenv("QSERVE_PDL");
    if (e && std::strcmp(e, "1") == 0) return PdlMode::kOn;
    if (e && std::strcmp(e, "0") == 0) return PdlMode::kOff;
    return PdlMode::kAuto;
  }();
  return mode;
}
inline thread_local int pdl_scope = -1;  // PdlScope's setting on this thread (-1: none)
}  // namespace detail

// Whether launch_pdl launches with PDL now: a PdlScope's setting on this thread if one is open, else true only when
// QSERVE_PDL=1 (read once per process, at the first use) or after set_pdl_enabled(true).
inline bool pdl_enabled() {
  if (detail::pdl_scope >= 0) return detail::pdl_scope != 0;
  return detail::pdl_mode() == detail::PdlMode::kOn;
}
// For tests and benchmarks: PDL on or off for the launches that follow, everywhere (not synchronized with other
// host threads); overrides QSERVE_PDL and the engine's rule.
inline void set_pdl_enabled(bool on) { detail::pdl_mode() = on ? detail::PdlMode::kOn : detail::PdlMode::kOff; }
// Whether a decode step of `batch` sequences runs with PDL: QSERVE_PDL=1 / 0 (or set_pdl_enabled) decide when set,
// else the measured rule (batch <= kPdlAutoMaxDecodeBatch).
inline bool pdl_for_decode(int batch) {
  const detail::PdlMode m = detail::pdl_mode();
  return m == detail::PdlMode::kOn || (m == detail::PdlMode::kAuto && batch <= kPdlAutoMaxDecodeBatch);
}
// PDL on or off for the launches this thread makes while the scope is open (nests; restores on close).
class PdlScope {
 public:
  explicit PdlScope(bool on) : prev_(detail::pdl_scope) { detail::pdl_scope = on ? 1 : 0; }
  ~PdlScope() { detail::pdl_scope = prev_; }
  PdlScope(const PdlScope&) = delete;
  PdlScope& operator=(const PdlScope&) = delete;

 private:
  int prev_;
};

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
