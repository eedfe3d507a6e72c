// Fuzz target: the safetensors reader (header length, JSON header, dtypes, shapes, offsets, overlap checks) on an
// arbitrary file. Every tensor it accepts is read in full, so an offset the checks let through would be caught
// by ASan as an out-of-bounds read of the mapping; float tensors are also converted as the loader does.
#include <cstdint>

#include "core/error.h"
#include "fuzz/fuzz_util.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = qs::fuzz::scratch_dir() / "input.safetensors";
  qs::fuzz::write_file(path, data, size);
  try {
    const auto f = qs::io::SafetensorsFile::open(path.string());
    volatile uint8_t sink = 0;
    for (const auto& t : f->tensors()) {
      const qs::Tensor x = f->get(t.name);
      const auto* p = static_cast<const uint8_t*>(x.raw());
      for (size_t i = 0; i < t.nbytes; ++i) sink = sink ^ p[i];
      // Typed reads too (UBSan checks their alignment): the float conversion the model loader performs.
      if (t.dtype == qs::DType::F32 || t.dtype == qs::DType::F16 || t.dtype == qs::DType::BF16) (void)x.to_f32();
    }
  } catch (const qs::Error&) {
  }
  return 0;
}
