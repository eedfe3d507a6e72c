// Connection loop and socket stream for HttpTransport (see http_transport.h).
#include "server/http_transport.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>

namespace qs::server {
namespace {

thread_local int t_socket = -1;

int poll_one(int sock, short events, int timeout_ms) {
  pollfd p{sock, events, 0};
  int r;
  do r = ::poll(&p, 1, timeout_ms);
  while (r < 0 && errno == EINTR);
  if (r > 0 && (p.revents & (POLLERR | POLLNVAL))) return -1;
  return r;
}

int to_ms(time_t sec, time_t usec) { return int(sec * 1000 + usec / 1000); }

void ip_and_port(const sockaddr_storage& ss, std::string& ip, int& port) {
  char buf[INET6_ADDRSTRLEN] = {0};
  if (ss.ss_family == AF_INET) {
    const auto* a = reinterpret_cast<const sockaddr_in*>(&ss);
    inet_ntop(AF_INET, &a->sin_addr, buf, sizeof buf);
    port = ntohs(a->sin_port);
  } else if (ss.ss_family == AF_INET6) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(&ss);
    inet_ntop(AF_INET6, &a->sin6_addr, buf, sizeof buf);
    port = ntohs(a->sin6_port);
  }
  ip = buf;
}

class ConnectionStream final : public httplib::Stream {
 public:
  ConnectionStream(int sock, int read_ms, int write_ms) : sock_(sock), read_ms_(read_ms), write_ms_(write_ms) {}

  bool has_buffered() const { return pos_ < len_; }
  bool is_readable() const override { return has_buffered() || poll_one(sock_, POLLIN, read_ms_) > 0; }
  bool is_writable() const override {
    return poll_one(sock_, POLLOUT, write_ms_) > 0 && HttpTransport::peer_connected(sock_);
  }
  ssize_t read(char* ptr, size_t size) override {
    if (!has_buffered()) {
      if (poll_one(sock_, POLLIN, read_ms_) <= 0) return -1;
      if (size >= sizeof buf_) return recv_some(ptr, size);
      const ssize_t n = recv_some(buf_, sizeof buf_);
      if (n <= 0) return n;
      pos_ = 0;
      len_ = size_t(n);
    }
    const size_t n = std::min(size, len_ - pos_);
    std::memcpy(ptr, buf_ + pos_, n);
    pos_ += n;
    return ssize_t(n);
  }
  ssize_t write(const char* ptr, size_t size) override {
    if (poll_one(sock_, POLLOUT, write_ms_) <= 0) return -1;
    ssize_t n;
    do n = ::send(sock_, ptr, size, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    return n;
  }
  void get_remote_ip_and_port(std::string& ip, int& port) const override {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    if (::getpeername(sock_, reinterpret_cast<sockaddr*>(&ss), &len) == 0) ip_and_port(ss, ip, port);
  }
  void get_local_ip_and_port(std::string& ip, int& port) const override {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    if (::getsockname(sock_, reinterpret_cast<sockaddr*>(&ss), &len) == 0) ip_and_port(ss, ip, port);
  }
  socket_t socket() const override { return sock_; }

 private:
  ssize_t recv_some(char* p, size_t n) {
    ssize_t r;
    do r = ::recv(sock_, p, n, 0);
    while (r < 0 && errno == EINTR);
    return r;
  }

  int sock_, read_ms_, write_ms_;
  char buf_[4096];
  size_t pos_ = 0, len_ = 0;
};

}  // namespace

HttpTransport::HttpTransport() { keep_alive_max_count_ = 100000; }

int HttpTransport::current_socket() { return t_socket; }

bool HttpTransport::peer_connected(int sock) {
  if (sock < 0) return true;
  char c;
  const ssize_t n = ::recv(sock, &c, 1, MSG_PEEK | MSG_DONTWAIT);
  if (n > 0) return true;
  if (n == 0) return false;
  return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
}

void HttpTransport::widen_backlog(int backlog) {
  const int sock = svr_sock_;
  if (sock >= 0) ::listen(sock, backlog);  // on a listening socket, listen() again only changes the backlog
}

bool HttpTransport::process_and_close_socket(socket_t sock) {
  // Every SSE event is a small write that must leave at once (no Nagle delay behind the client's delayed ACK).
  const int one = 1;
  ::setsockopt(sock, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  ConnectionStream strm(sock, to_ms(read_timeout_sec_, read_timeout_usec_),
                        to_ms(write_timeout_sec_, write_timeout_usec_));
  t_socket = sock;
  bool ret = false;
  size_t count = keep_alive_max_count_;
  auto wait_for_request = [&] {
    // The next request of a kept-alive connection, polled in slices so that a stopping server lets go.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(keep_alive_timeout_sec_);
    while (svr_sock_ != INVALID_SOCKET) {
      if (strm.has_buffered()) return true;
      const int r = poll_one(sock, POLLIN, 50);
      if (r < 0) return false;
      if (r > 0) return true;
      if (std::chrono::steady_clock::now() >= deadline) return false;
    }
    return false;
  };
  while (count > 0 && wait_for_request()) {
    const bool close_connection = count == 1 || svr_sock_ == INVALID_SOCKET;
    bool connection_closed = false;
    ret = process_request(strm, close_connection, connection_closed, nullptr);
    if (!ret || connection_closed) break;
    --count;
  }
  t_socket = -1;
  ::shutdown(sock, SHUT_RDWR);
  ::close(sock);
  return ret;
}

}  // namespace qs::server
