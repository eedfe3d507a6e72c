// Checked file reads and writes (see file_io.h).
#include "core/file_io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdarg>
#include <cstring>
#include <nlohmann/json.hpp>
#include <vector>

#include "core/error.h"

namespace qs {

namespace {

const char* file_kind(mode_t m) {
  if (S_ISDIR(m)) return "a directory";
  if (S_ISFIFO(m)) return "a FIFO (named pipe)";
  if (S_ISCHR(m)) return "a character device";
  if (S_ISBLK(m)) return "a block device";
  if (S_ISSOCK(m)) return "a socket";
  return "not a regular file";
}

}  // namespace

int open_regular_file(const std::string& path, const std::string& what) {
  // O_NONBLOCK: opening a FIFO must not wait for a writer; it has no effect on regular files.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    const int err = errno;
    QS_FAIL() << "cannot open " << what << " " << path << ": " << std::strerror(err);
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    QS_FAIL() << "cannot stat " << what << " " << path << ": " << std::strerror(err);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    QS_FAIL() << what << " " << path << " is " << file_kind(st.st_mode) << ", expected a regular file";
  }
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags >= 0) ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
  return fd;
}

void check_regular_file(const std::string& path, const std::string& what) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    const int err = errno;
    QS_FAIL() << what << " " << path << (err == ENOENT ? " does not exist" : ": ") << (err == ENOENT ? "" : std::strerror(err));
  }
  QS_CHECK(S_ISREG(st.st_mode)) << what << " " << path << " is " << file_kind(st.st_mode) << ", expected a regular file";
}

std::string read_file_checked(const std::string& path, const std::string& what, size_t max_bytes) {
  const int fd = open_regular_file(path, what);
  struct stat st {};
  ::fstat(fd, &st);
  if (size_t(st.st_size) > max_bytes) {
    ::close(fd);
    QS_FAIL() << what << " " << path << " is " << st.st_size << " bytes, over the limit of " << max_bytes;
  }
  std::string out;
  out.resize(size_t(st.st_size));
  size_t got = 0;
  while (got < out.size()) {
    const ssize_t n = ::read(fd, out.data() + got, out.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      QS_FAIL() << "cannot read " << what << " " << path << ": " << std::strerror(err);
    }
    if (n == 0) break;  // the file shrank
    got += size_t(n);
  }
  ::close(fd);
  out.resize(got);
  return out;
}

std::string json_error_text(const std::exception& e) {
  if (const auto* p = dynamic_cast<const nlohmann::json::parse_error*>(&e))
    return "syntax error at byte " + std::to_string(p->byte);
  if (const auto* t = dynamic_cast<const nlohmann::json::exception*>(&e)) {
    // "[json.exception.type_error.302] type must be string, but is number": drop the bracketed id.
    std::string s = t->what();
    const size_t close = s.find("] ");
    return close == std::string::npos ? s : s.substr(close + 2);
  }
  return e.what();
}

void CheckedWriter::write(const std::string& s) {
  QS_CHECK(s.empty() || std::fwrite(s.data(), 1, s.size(), f_) == s.size())
      << "writing " << what_ << " failed: " << std::strerror(errno);
}

void CheckedWriter::printf(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  va_list ap2;
  va_copy(ap2, ap);
  const int n = std::vsnprintf(nullptr, 0, fmt, ap);
  va_end(ap);
  std::vector<char> buf(size_t(n > 0 ? n : 0) + 1);
  std::vsnprintf(buf.data(), buf.size(), fmt, ap2);
  va_end(ap2);
  write(std::string(buf.data(), size_t(n > 0 ? n : 0)));
}

void CheckedWriter::flush() {
  QS_CHECK(std::fflush(f_) == 0 && !std::ferror(f_)) << "writing " << what_ << " failed: " << std::strerror(errno);
}

void write_file_checked(const std::string& path, const std::string& data) {
  if (path == "-") {
    CheckedWriter w(stdout, "standard output");
    w.write(data);
    w.flush();
    return;
  }
  std::FILE* f = std::fopen(path.c_str(), "wb");
  QS_CHECK(f) << "cannot write " << path << ": " << std::strerror(errno);
  const bool ok = data.empty() || std::fwrite(data.data(), 1, data.size(), f) == data.size();
  const int err = errno;
  const bool flushed = std::fflush(f) == 0 && !std::ferror(f);
  const bool closed = std::fclose(f) == 0;
  QS_CHECK(ok && flushed && closed) << "writing " << path << " failed: " << std::strerror(ok ? errno : err);
}

void write_fd_all(int fd, const void* data, size_t n, const std::string& partial, const std::string& what) {
  const char* c = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd, c, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      const std::string err = w < 0 ? std::strerror(errno) : "no bytes written";
      ::close(fd);
      ::unlink(partial.c_str());
      QS_FAIL() << "writing " << what << " failed: " << err;
    }
    c += w;
    n -= size_t(w);
  }
}

}  // namespace qs
