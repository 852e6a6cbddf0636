#pragma once
/// \file sd_server/connection.hpp
/// Detects that the client of an HTTP request has gone away while the server is still working on it.
///
/// cpp-httplib 0.11 has no `Request::is_connection_closed()` and does not hand the socket to handlers. The request
/// does carry both ends' ports, so the probe finds the server-side socket among the process's descriptors (the one
/// whose local port and peer port are the request's) and peeks at it without blocking: a read of 0 bytes (orderly
/// close) or a reset means the client is gone. Linux only (/proc/self/fd).

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/types.h>

#include <cerrno>
#include <filesystem>
#include <string>
#include <system_error>

namespace carousel::examples::sd_server {

/// Finds the server-side socket of one request and tells whether its peer has closed it.
/// Thread-safety: one probe per handler thread; `client_gone` only reads the socket's state.
class ConnectionProbe {
 public:
  /// A probe for the connection between local port `local_port` and remote port `remote_port` (as in
  /// `httplib::Request`). When no such socket is found, `client_gone()` always answers false.
  ConnectionProbe(int local_port, int remote_port) : fd_(find(local_port, remote_port)) {}

  /// True once the client closed or reset the connection. Never blocks; data the client may have pipelined is left
  /// unread.
  bool client_gone() const {
    if (fd_ < 0) return false;
    char c = 0;
    const ssize_t r = ::recv(fd_, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (r == 0) return true;
    if (r > 0) return false;
    return errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR;
  }

  /// Whether the socket was found.
  bool valid() const noexcept { return fd_ >= 0; }

 private:
  static int port_of(const sockaddr_storage& a) {
    if (a.ss_family == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in&>(a).sin_port);
    if (a.ss_family == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6&>(a).sin6_port);
    return -1;
  }

  static int find(int local_port, int remote_port) {
    if (local_port <= 0 || remote_port <= 0) return -1;
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd", ec)) {
      int fd = -1;
      try {
        fd = std::stoi(entry.path().filename().string());
      } catch (const std::exception&) {
        continue;
      }
      sockaddr_storage local{}, peer{};
      socklen_t local_len = sizeof local, peer_len = sizeof peer;
      if (::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &local_len) != 0) continue;
      if (port_of(local) != local_port) continue;
      if (::getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &peer_len) != 0) continue;
      if (port_of(peer) == remote_port) return fd;
    }
    return -1;
  }

  int fd_;
};

}  // namespace carousel::examples::sd_server
