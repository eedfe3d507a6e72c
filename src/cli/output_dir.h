// Where `qserve quantize` may write, and what it may remove. The rule is "never delete what we did not create":
//   - --out may not be --model, inside it, or a folder that contains it (checked on the real, symlink-resolved
//     paths), and may not be a symbolic link;
//   - an existing non-empty --out is replaced (with --force) only when it is a previous qserve output: it holds
//     the marker file kOutputMarker (written by every qserve quantize) or a model.safetensors with qserve metadata,
//     and nothing but the files qserve writes there (no sub-folders, no other names); anything else is refused with
//     a message naming the unexpected entry;
//   - replacing renames the old folder aside, publishes the new one, then removes the old folder's known files
//     one by one and the (then empty) folder: never a recursive delete of a user's folder.
#pragma once

#include <filesystem>
#include <string>

namespace qs::cli {

constexpr const char* kOutputMarker = ".qserve-output";

// Throws qs::Error when `out` may not be used as the output for `model` (see above).
void check_output_location(const std::string& model, const std::string& out, bool force);

// Creates a fresh temporary folder beside `out` (never an existing one) containing the marker, after the checks of
// check_output_location; the caller writes into it and then calls publish_output.
std::filesystem::path prepare_output(const std::string& model, const std::string& out, bool force);

// Moves the finished temporary folder to `out`, replacing a previous qserve output there (see above).
void publish_output(const std::filesystem::path& tmp, const std::string& out, bool force);

// Removes a temporary folder that prepare_output created (its files, then the folder). No error is thrown.
void remove_created_output(const std::filesystem::path& tmp);

}  // namespace qs::cli
