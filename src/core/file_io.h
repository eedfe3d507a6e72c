// Checked file access for every reader of untrusted input and every writer of results:
//   - open_regular_file / read_file_checked refuse what is not a regular file (a directory, a FIFO that would block
//     forever, a device) with an error naming the path, without ever blocking (O_NONBLOCK, then fstat), and bound
//     the size read;
//   - json_error_text turns a nlohmann::json exception into a message that never quotes the input (a parse error
//     reports only the byte offset: a file's bytes are not echoed into logs or HTTP responses);
//   - CheckedWriter / write_file_checked / write_fd_all check every write and the final flush/close, so
//     `--json /dev/full` or a full disk is an error, not a silently truncated result.
#pragma once

#include <cstdio>
#include <exception>
#include <string>

namespace qs {

// Opens `path` read-only and returns the file descriptor; throws qs::Error (naming `what` and the path) when it does
// not exist, cannot be opened, or is not a regular file. The caller closes the descriptor.
int open_regular_file(const std::string& path, const std::string& what);

// Throws unless `path` exists and is a regular file (symbolic links followed).
void check_regular_file(const std::string& path, const std::string& what);

// The whole file, at most `max_bytes` (an error names the limit when the file is larger).
std::string read_file_checked(const std::string& path, const std::string& what, size_t max_bytes = size_t(1) << 30);

// A nlohmann::json exception as text without any of the input: "syntax error at byte N" for a parse error, the
// type error text (which names types, not values) otherwise.
std::string json_error_text(const std::exception& e);

// Writes to a stdio stream, checking each write and the final flush; throws qs::Error naming `what` on failure.
class CheckedWriter {
 public:
  CheckedWriter(std::FILE* f, std::string what) : f_(f), what_(std::move(what)) {}
  void write(const std::string& s);
  void printf(const char* fmt, ...) __attribute__((format(printf, 2, 3)));
  void flush();  // fflush + ferror check

 private:
  std::FILE* f_;
  std::string what_;
};

// Writes `data` to `path` (created or truncated), checking every write and the close. "-" means stdout.
void write_file_checked(const std::string& path, const std::string& data);

// Writes all `n` bytes to the descriptor (short writes and EINTR retried). On failure closes `fd`, removes
// `partial` (the file being written, which the caller created) and throws qs::Error "writing <what> failed: ...".
void write_fd_all(int fd, const void* data, size_t n, const std::string& partial, const std::string& what);

}  // namespace qs
