// `qserve version`: build information (version, whether the CUDA backend is compiled in).
#include <cstdio>

#include "cli/command.h"
#include "core/paths.h"

namespace {
qs::cli::CommandRegistrar reg("version", "Print version and build information", [](CLI::App* sub) {
  sub->callback([] {
    std::printf("qserve 0.1.0\n");
#ifdef QSERVE_HAVE_CUDA
    std::printf("cuda backend: compiled (sm_90a)\n");
#else
    std::printf("cuda backend: not compiled\n");
#endif
    std::printf("data dir: %s\n", qs::data_dir().c_str());
  });
});
}  // namespace
