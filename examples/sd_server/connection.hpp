#pragma once
/// \file sd_server/connection.hpp
/// What the server knows about its clients' TCP connections, which cpp-httplib 0.11 does not tell its handlers:
/// whether a client has gone away (ConnectionProbe) and how long a connection has taken to deliver its request
/// (RequestReadDeadline, which closes the slow ones).
///
/// cpp-httplib does not hand the socket to handlers, but a request carries the client's address and port, so the
/// server-side socket is found among the process's descriptors (the one whose local port is the server's and whose
/// peer is the request's client). Linux only (/proc/self/fd, TCP_INFO).

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <vector>

namespace carousel::examples::sd_server {

namespace detail {

// The port of a socket address, or -1 for another family.
inline int port_of(const sockaddr_storage& a) {
  if (a.ss_family == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in&>(a).sin_port);
  if (a.ss_family == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6&>(a).sin6_port);
  return -1;
}

/// A client's name as the server's handlers see it: the numeric address (as cpp-httplib's `Request::remote_addr`)
/// and the port, "ADDR PORT".
inline std::string peer_key(std::string_view address, int port) {
  return std::string(address) + " " + std::to_string(port);
}

// The peer key of a connected socket whose local port is `local_port`; "" for anything else (a listening socket,
// another port, not a socket).
inline std::string accepted_peer(int fd, int local_port) {
  sockaddr_storage local{}, peer{};
  socklen_t local_len = sizeof local, peer_len = sizeof peer;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &local_len) != 0) return {};
  if (port_of(local) != local_port) return {};
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &peer_len) != 0) return {};
  char host[NI_MAXHOST] = {};
  if (::getnameinfo(reinterpret_cast<const sockaddr*>(&peer), peer_len, host, sizeof host, nullptr, 0,
                    NI_NUMERICHOST) != 0)
    return {};
  return peer_key(host, port_of(peer));
}

// Calls f(fd, peer key) for every connection accepted on `local_port` that the process holds.
template <class F>
void for_each_accepted(int local_port, F&& f) {
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd", ec)) {
    const std::string name = entry.path().filename().string();
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos || name.size() > 9) continue;
    const int fd = std::stoi(name);
    const std::string peer = accepted_peer(fd, local_port);
    if (!peer.empty()) f(fd, peer);
  }
}

// The kernel's TCP state of a socket (TCP_ESTABLISHED, TCP_CLOSE_WAIT, TCP_CLOSE, ...), or -1.
inline int tcp_state(int fd) {
  tcp_info info{};
  socklen_t len = sizeof info;
  if (::getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) != 0) return -1;
  return info.tcpi_state;
}

/// The reason phrase of the statuses the server answers generation requests with (clients read only the code).
inline const char* reason_phrase(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 400:
      return "Bad Request";
    case 429:
      return "Too Many Requests";
    case 500:
      return "Internal Server Error";
    case 503:
      return "Service Unavailable";
    case 504:
      return "Gateway Timeout";
    default:
      return "Status";
  }
}

}  // namespace detail

/// Finds the server-side socket of one request and tells whether its client is still there.
///
/// A client that closes its socket sends a FIN, and so does one that only shuts its sending side and still waits for
/// the answer (a half-close, as `nc -N` or a hand-written client may do). The two look alike until the server sends
/// something: a socket that is closed answers with a reset, a half-closed one accepts the bytes. So a FIN alone makes
/// the state `half_closed`, and the caller sends something harmless once (`send_interim_response`); the reset that
/// comes back turns the state to `gone`.
/// Thread-safety: one probe per handler thread; probing only reads the socket's state.
class ConnectionProbe {
 public:
  /// What is known about the client.
  enum class Peer {
    connected,    ///< no FIN: the client may still be sending or is waiting
    half_closed,  ///< a FIN came and no reset: a half-close, or a close that the server has not yet written to
    gone,         ///< the connection was reset or has failed: nobody reads an answer
  };

  /// A probe for the connection accepted on `local_port` from `remote_addr`:`remote_port` (as in
  /// `httplib::Request`). When no such socket is found, the state is always `connected`.
  ConnectionProbe(int local_port, std::string_view remote_addr, int remote_port)
      : fd_(find(local_port, detail::peer_key(remote_addr, remote_port))) {}

  /// The client's state now. Never blocks; data the client may have pipelined is left unread.
  Peer state() const {
    if (fd_ < 0) return Peer::connected;
    char c = 0;
    const ssize_t r = ::recv(fd_, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (r > 0) return Peer::connected;
    if (r < 0) return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? Peer::connected : Peer::gone;
    return detail::tcp_state(fd_) == TCP_CLOSE ? Peer::gone : Peer::half_closed;
  }

  /// Sends `HTTP/1.1 100 Continue` (an interim response every HTTP/1.1 client must accept before the final one) to
  /// make a closed client's socket answer with a reset. Call it only before the response has begun and only for an
  /// HTTP/1.1 request. Returns false when the write failed (the client is gone).
  bool send_interim_response() const {
    static constexpr std::string_view interim = "HTTP/1.1 100 Continue\r\n\r\n";
    if (fd_ < 0) return true;
    const ssize_t w = ::send(fd_, interim.data(), interim.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    return w == static_cast<ssize_t>(interim.size());
  }

  /// Writes `bytes` whole within `timeout` (a whole response, for a half-closed client: cpp-httplib 0.11 writes
  /// nothing to a socket that has seen a FIN). Returns false when the client is gone or too slow to take them.
  bool send_all(std::string_view bytes, std::chrono::milliseconds timeout) const {
    if (fd_ < 0) return false;
    const auto until = std::chrono::steady_clock::now() + timeout;
    while (!bytes.empty()) {
      const ssize_t w = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      if (w > 0) {
        bytes.remove_prefix(static_cast<std::size_t>(w));
        continue;
      }
      if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return false;
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now());
      pollfd p{fd_, POLLOUT, 0};
      if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) <= 0) return false;
    }
    return true;
  }

  /// Whether the socket was found.
  bool valid() const noexcept { return fd_ >= 0; }

 private:
  static int find(int local_port, const std::string& peer) {
    if (local_port <= 0) return -1;
    int found = -1;
    detail::for_each_accepted(local_port, [&](int fd, const std::string& p) {
      if (p == peer) found = fd;
    });
    return found;
  }

  int fd_;
};

/// Closes connections that take longer than a deadline to deliver a request: the time from a connection's first
/// sight (or from the end of its previous response) until the request's head and body have been read. The answer's
/// own time (a long generation, an event stream) is not limited. cpp-httplib 0.11 bounds each read of the socket but
/// not a whole request, so a client sending one header byte every few seconds ("slowloris") would hold a worker
/// thread for hours; with this watchdog it holds one for at most the deadline (plus one scan period).
///
/// The server reports each request's progress by its client's peer key (`detail::peer_key`): `request_read` when
/// the request is in, `response_written` when the answer is out (the connection may carry another request). A
/// watchdog thread looks at the process's accepted sockets every `period` and shuts down the ones over the deadline.
/// Thread-safety: every member may be called from any thread.
class RequestReadDeadline {
 public:
  using Clock = std::chrono::steady_clock;

  /// Requests must be read within `deadline`; the watchdog looks every `period`.
  explicit RequestReadDeadline(std::chrono::milliseconds deadline,
                               std::chrono::milliseconds period = std::chrono::milliseconds(250))
      : deadline_(deadline), period_(period) {}

  RequestReadDeadline(const RequestReadDeadline&) = delete;
  RequestReadDeadline& operator=(const RequestReadDeadline&) = delete;
  ~RequestReadDeadline() { stop(); }

  /// Starts watching the connections accepted on `local_port`. Idempotent.
  void start(int local_port) {
    std::lock_guard lock(mutex_);
    if (thread_.joinable()) return;
    port_ = local_port;
    stopping_ = false;
    thread_ = std::thread([this] { watch(); });
  }

  /// Stops the watchdog (joins its thread). Idempotent.
  void stop() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

  /// The request on `peer`'s connection has been read whole: no deadline until its response is written.
  void request_read(const std::string& peer) {
    std::lock_guard lock(mutex_);
    marks_[peer] = Mark{Clock::now(), true};
  }

  /// The response on `peer`'s connection has been written: the next request must arrive within the deadline.
  void response_written(const std::string& peer) {
    std::lock_guard lock(mutex_);
    marks_[peer] = Mark{Clock::now(), false};
  }

  /// Connections closed for being slow, since construction.
  std::uint64_t closed() const noexcept { return closed_.load(); }

 private:
  struct Mark {
    Clock::time_point since;  // first sight, or the end of the last response
    bool reading_done = false;
  };

  void watch() {
    std::unique_lock lock(mutex_);
    while (!wake_.wait_for(lock, period_, [&] { return stopping_; })) {
      lock.unlock();
      std::vector<std::pair<int, std::string>> open;
      detail::for_each_accepted(port_, [&](int fd, const std::string& peer) { open.emplace_back(fd, peer); });
      lock.lock();
      const auto now = Clock::now();
      std::map<std::string, Mark> seen;
      for (const auto& [fd, peer] : open) {
        auto it = marks_.find(peer);
        Mark mark = it == marks_.end() ? Mark{now, false} : it->second;
        if (!mark.reading_done && now - mark.since > deadline_ && shut_if_peer(fd, peer)) {
          closed_.fetch_add(1);
          mark.since = now;  // shut once; the connection's thread closes it
        }
        seen.emplace(peer, mark);
      }
      // Connections that closed are forgotten. Progress reported for one the scan has not seen yet is kept.
      for (auto& [peer, mark] : marks_)
        if (now - mark.since < period_ * 2) seen.emplace(peer, mark);
      marks_.swap(seen);
    }
  }

  // Shuts down the socket `fd` if it still is `peer`'s: a duplicate descriptor pins the socket, so a descriptor
  // number closed and reused by a new connection since the scan is never touched.
  static bool shut_if_peer(int fd, const std::string& peer) {
    const int dup = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (dup < 0) return false;
    sockaddr_storage local{};
    socklen_t len = sizeof local;
    const bool same = ::getsockname(dup, reinterpret_cast<sockaddr*>(&local), &len) == 0 &&
                      detail::accepted_peer(dup, detail::port_of(local)) == peer;
    if (same) ::shutdown(dup, SHUT_RDWR);
    ::close(dup);
    return same;
  }

  const std::chrono::milliseconds deadline_;
  const std::chrono::milliseconds period_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::map<std::string, Mark> marks_;  // by peer key
  int port_ = -1;
  bool stopping_ = false;
  std::atomic<std::uint64_t> closed_{0};
  std::thread thread_;
};

}  // namespace carousel::examples::sd_server
