// The HTTP transport under the OpenAI server: cpp-httplib's Server with our own connection loop, so that a
// handler can tell whether its client is still there. httplib 0.11 (Debian's) gives handlers no access to the
// socket and only notices a vanished client when a write fails; we override its per-connection hook
// (process_and_close_socket) with an equivalent keep-alive loop over our own Stream, which
//  * remembers the connection's socket for the handler thread (current_socket()), so a handler waiting for the
//    engine can poll peer_connected() and abort the request as soon as the client goes away, streaming or not;
//  * sends with MSG_NOSIGNAL (a vanished client never raises SIGPIPE) and reads through a small buffer;
//  * reports a stream as not writable once the peer has closed, which ends a chunked (SSE) response at once;
//  * keeps connections alive for many requests (httplib's default closes after 5).
// Everything else (parsing, routing, chunked encoding, payload limit) is httplib's.
#pragma once

#include <httplib.h>

namespace qs::server {

class HttpTransport : public httplib::Server {
 public:
  HttpTransport();
  // The socket of the connection the calling thread is serving; -1 outside a handler.
  static int current_socket();
  // Whether the peer of `sock` has neither closed nor reset the connection (pending data counts as connected).
  // A client that half-closes its sending side after the request counts as gone (HTTP clients do not do that).
  static bool peer_connected(int sock);
  // Raises the listen backlog of the bound socket (Debian's httplib is built with a backlog of 5, which drops
  // the SYNs of a burst of clients: they retry after 1, 3, 7... seconds). Call after bind_to_port.
  void widen_backlog(int backlog);

 private:
  bool process_and_close_socket(socket_t sock) override;
};

}  // namespace qs::server
