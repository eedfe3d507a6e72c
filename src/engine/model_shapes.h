// Built-in model shapes for random-weight benchmarks (`qserve bench --shape NAME`): the config.json texts of the
// paper's models (public Hugging Face configs, transformers-4 layout), embedded so a benchmark needs no files.
// tests/engine/model_shapes_test.cc checks that each text equals ../shared/data/configs/NAME.json.
#pragma once

#include <string>
#include <vector>

#include "io/model_config.h"

namespace qs::engine {

// Names accepted by builtin_shape_json / builtin_shape, in a stable order.
const std::vector<std::string>& builtin_shape_names();
// The embedded config.json text of `name`; throws qs::Error listing the known names for an unknown one.
const std::string& builtin_shape_json(const std::string& name);
// The parsed config of `name`.
io::ModelConfig builtin_shape(const std::string& name);

}  // namespace qs::engine
