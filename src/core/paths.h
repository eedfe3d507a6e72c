// Where qserve finds the project's shared data (models, fixtures, text): $QSERVE_DATA, else ../shared/data
// relative to the source tree.
#pragma once

#include <string>

namespace qs {

std::string data_dir();

}  // namespace qs
