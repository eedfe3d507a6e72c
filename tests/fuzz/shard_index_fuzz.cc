// Fuzz target: a sharded checkpoint folder's model.safetensors.index.json (weight_map entries, shard paths that
// must stay inside the folder) next to one valid shard, through TensorStore::open. A shard path that escaped
// the folder would open ../outside.safetensors, which the target treats as a finding (abort).
#include <cstdint>
#include <cstdlib>

#include "core/error.h"
#include "fuzz/fuzz_util.h"
#include "io/safetensors.h"

namespace {
namespace fs = std::filesystem;

const fs::path& folder() {
  static const fs::path dir = [] {
    const fs::path d = qs::fuzz::scratch_dir() / "ck";
    fs::create_directories(d);
    qs::io::SafetensorsWriter w;
    qs::Tensor t(qs::DType::F32, {2, 2});
    for (int i = 0; i < 4; ++i) t.data<float>()[i] = float(i);
    w.add("a", t);
    w.add("b", t);
    w.write((d / "model-00001-of-00001.safetensors").string());
    w.write((qs::fuzz::scratch_dir() / "outside.safetensors").string());  // must never be reached
    return d;
  }();
  return dir;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const fs::path dir = folder();
  qs::fuzz::write_file(dir / "model.safetensors.index.json", data, size);
  try {
    const auto store = qs::io::TensorStore::open(dir.string());
    for (const auto& n : store.names())
      if (fs::path(store.info(n).file).parent_path() != dir) std::abort();  // escaped the folder
  } catch (const qs::Error&) {
  }
  return 0;
}
