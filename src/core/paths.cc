// Data directory lookup (see paths.h).
#include "core/paths.h"

#include <cstdlib>

namespace qs {

std::string data_dir() {
  if (const char* e = std::getenv("QSERVE_DATA"); e && *e) return e;
  return QSERVE_DEFAULT_DATA;
}

}  // namespace qs
