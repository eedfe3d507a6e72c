// Output folder safety for `qserve quantize` (see output_dir.h).
#include "cli/output_dir.h"

#include <unistd.h>

#include <array>
#include <cstdio>
#include <fstream>

#include "core/error.h"
#include "model/checkpoint/quantized_checkpoint.h"

namespace qs::cli {

namespace fs = std::filesystem;

namespace {

// The names qserve quantize writes into its output folder (and their in-progress temporaries, see checkpoint.cc).
constexpr std::array<const char*, 9> kKnownFiles = {
    kOutputMarker,           "model.safetensors",     "config.json",       "tokenizer.json",
    "tokenizer_config.json", "generation_config.json", "chat_template.jinja", "special_tokens_map.json",
    "tokenizer.model"};

bool is_known_file(const std::string& name) {
  for (const char* k : kKnownFiles) {
    if (name == k) return true;
    // checkpoint writer temporaries: "<name>.tmp.<pid>" left behind by an interrupted write.
    const std::string pre = std::string(k) + ".tmp.";
    if (name.size() > pre.size() && name.compare(0, pre.size(), pre) == 0 &&
        name.find_first_not_of("0123456789", pre.size()) == std::string::npos)
      return true;
  }
  return false;
}

// True when `inner` is `outer` or lies below it (both absolute and normalized).
bool is_within(const fs::path& inner, const fs::path& outer) {
  auto i = inner.begin();
  for (auto o = outer.begin(); o != outer.end(); ++o, ++i) {
    if (o->empty()) continue;  // a trailing separator
    if (i == inner.end() || *i != *o) return false;
  }
  return true;
}

fs::path real_path(const std::string& p) {
  std::error_code ec;
  fs::path r = fs::weakly_canonical(fs::absolute(p), ec);
  QS_CHECK(!ec) << "cannot resolve the path " << p << ": " << ec.message();
  return r.lexically_normal();
}

// Throws unless the existing, non-empty folder `dst` is a previous qserve output holding only qserve's files.
void check_replaceable(const fs::path& dst, const std::string& out) {
  const bool marked = fs::is_regular_file(fs::symlink_status(dst / kOutputMarker));
  const bool checkpoint = model::QuantizedCheckpoint::is_quantized_checkpoint(dst.string());
  QS_CHECK(marked || checkpoint) << "--out " << out
                                 << " exists, is not empty and is not a previous qserve quantize output; refusing "
                                    "to replace it even with --force (remove it yourself or choose another --out)";
  for (const auto& e : fs::directory_iterator(dst)) {
    const std::string name = e.path().filename().string();
    QS_CHECK(e.symlink_status().type() == fs::file_type::regular && is_known_file(name))
        << "--out " << out << " is a previous qserve output but also holds '" << name
        << "', which qserve did not write; refusing to replace it (move that entry away first)";
  }
}

}  // namespace

void check_output_location(const std::string& model, const std::string& out, bool force) {
  const fs::path abs = fs::absolute(out).lexically_normal();
  QS_CHECK(!abs.filename().empty() && abs.filename() != "." && abs.filename() != "..")
      << "--out " << out << " is not a folder name";
  const fs::file_status st = fs::symlink_status(abs);
  QS_CHECK(st.type() != fs::file_type::symlink) << "--out " << out << " is a symbolic link; give the real folder";
  const fs::path real_out = real_path(out), real_model = real_path(model);
  QS_CHECK(real_out != real_model) << "--out " << out << " is the --model folder; choose another output folder";
  QS_CHECK(!is_within(real_out, real_model))
      << "--out " << out << " is inside the --model folder " << model << "; choose a folder outside it";
  QS_CHECK(!is_within(real_model, real_out))
      << "--out " << out << " contains the --model folder " << model << "; choose a folder that does not";
  if (fs::exists(st)) {
    QS_CHECK(fs::is_directory(st)) << "--out " << out << " exists and is not a directory";
    if (!fs::is_empty(abs)) {
      QS_CHECK(force) << "--out " << out << " exists and is not empty (use --force to replace a previous qserve output)";
      check_replaceable(abs, out);
    }
  }
}

fs::path prepare_output(const std::string& model, const std::string& out, bool force) {
  check_output_location(model, out, force);
  const fs::path dst = fs::absolute(out).lexically_normal();
  const fs::path parent = dst.parent_path();
  QS_CHECK(fs::is_directory(parent)) << "cannot write the output: directory " << parent.string() << " does not exist";
  const fs::path tmp = parent / (dst.filename().string() + ".tmp-" + std::to_string(::getpid()));
  std::error_code ec;
  const bool created = fs::create_directory(tmp, ec);
  QS_CHECK(!ec) << "cannot write the output directory " << parent.string() << ": " << ec.message();
  // An existing folder of that name is not ours: never write into it (nor remove it later).
  QS_CHECK(created) << "cannot write the output: " << tmp.string() << " already exists (a stale temporary folder? "
                    << "remove it yourself)";
  {
    std::ofstream f(tmp / kOutputMarker);
    f << "written by qserve quantize; a folder with this file may be replaced by qserve quantize --force\n";
    f.flush();
    if (!f.good()) {
      remove_created_output(tmp);
      QS_FAIL() << "cannot write into " << tmp.string();
    }
  }
  return tmp;
}

void publish_output(const fs::path& tmp, const std::string& out, bool force) {
  const fs::path dst = fs::absolute(out).lexically_normal();
  std::error_code ec;
  fs::path old;
  if (fs::exists(fs::symlink_status(dst))) {
    if (fs::is_empty(dst)) {
      fs::remove(dst, ec);  // an empty folder (remove() never recurses)
      QS_CHECK(!ec) << "cannot replace the empty folder " << dst.string() << ": " << ec.message();
    } else {
      // Again: the folder may have changed during the run.
      QS_CHECK(force) << "--out " << out << " was filled while quantizing; not replacing it without --force";
      check_replaceable(dst, out);
      old = dst.parent_path() / (dst.filename().string() + ".old-" + std::to_string(::getpid()));
      fs::rename(dst, old, ec);
      QS_CHECK(!ec) << "cannot move the previous output " << dst.string() << " aside: " << ec.message();
    }
  }
  fs::rename(tmp, dst, ec);
  QS_CHECK(!ec) << "cannot move " << tmp.string() << " to " << dst.string() << ": " << ec.message();
  if (!old.empty()) {
    for (const auto& e : fs::directory_iterator(old))
      if (is_known_file(e.path().filename().string()) && e.symlink_status().type() == fs::file_type::regular)
        fs::remove(e.path(), ec);
    if (!fs::remove(old, ec))
      std::fprintf(stderr, "warning: could not remove the previous output, moved to %s\n", old.string().c_str());
  }
}

void remove_created_output(const fs::path& tmp) {
  std::error_code ec;
  fs::remove_all(tmp, ec);  // prepare_output created it (never an existing folder): all of it is ours
}

}  // namespace qs::cli
