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
  static bool peer_connected(int sock);

 private:
  bool process_and_close_socket(socket_t sock) override;
};

}  // namespace qs::server
