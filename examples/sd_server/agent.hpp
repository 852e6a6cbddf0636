#pragma once
/// \file sd_server/agent.hpp
/// HAProxy's agent-check protocol: a TCP listener that answers every connection with one line (e.g. `up 75%` or
/// `drain`) and closes it. HAProxy connects every `agent-inter` and applies the line to the server: `up NN%` marks it
/// up with weight NN% of its configured weight, `drain` sets its weight to 0 without marking it down.

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>

namespace carousel::examples::sd_server {

/// Answers each TCP connection on `host:port` with `line()` and closes it, on a thread of its own.
/// The listener never reads from a connection, so a client that sends nothing, or never closes, holds nothing.
/// Thread-safety: `line` is called from the agent's thread; `stop` may be called from any thread.
class AgentResponder {
 public:
  /// Binds `host:port` (port 0 picks a free one, see `port()`) and starts answering. Throws std::runtime_error when
  /// the address cannot be resolved or bound.
  AgentResponder(const std::string& host, int port, std::function<std::string()> line) : line_(std::move(line)) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    addrinfo* found = nullptr;
    const std::string service = std::to_string(port);
    if (getaddrinfo(host.c_str(), service.c_str(), &hints, &found) != 0 || !found)
      throw std::runtime_error("agent: cannot resolve " + host);
    fd_ = socket(found->ai_family, found->ai_socktype, found->ai_protocol);
    const int one = 1;
    const bool ok = fd_ >= 0 && setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) == 0 &&
                    ::bind(fd_, found->ai_addr, found->ai_addrlen) == 0 && ::listen(fd_, 64) == 0;
    const int error = errno;
    freeaddrinfo(found);
    if (!ok) {
      if (fd_ >= 0) ::close(fd_);
      throw std::runtime_error("agent: cannot listen on " + host + ":" + service + ": " + std::strerror(error));
    }
    sockaddr_storage bound{};
    socklen_t length = sizeof bound;
    getsockname(fd_, reinterpret_cast<sockaddr*>(&bound), &length);
    port_ = ntohs(bound.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                              : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
    thread_ = std::thread([this] { serve(); });
  }

  AgentResponder(const AgentResponder&) = delete;
  AgentResponder& operator=(const AgentResponder&) = delete;

  /// Stops answering and closes the listener.
  ~AgentResponder() { stop(); }

  /// Stops answering and closes the listener. Idempotent.
  void stop() {
    if (stopping_.exchange(true)) return;
    if (thread_.joinable()) thread_.join();
    ::close(fd_);
  }

  /// The bound port.
  int port() const noexcept { return port_; }

 private:
  void serve() {
    while (!stopping_) {
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, 100) <= 0) continue;  // wakes up every 100 ms to see `stopping_`
      const int client = ::accept(fd_, nullptr, nullptr);
      if (client < 0) continue;
      std::string text;
      try {
        text = line_() + "\n";
      } catch (...) {
        text = "down\n";  // cannot tell the load: HAProxy stops sending here until the next check answers
      }
      // A few bytes into a fresh connection's empty send buffer: never blocks for long; MSG_NOSIGNAL for a client
      // that is already gone.
      const timeval limit{1, 0};
      setsockopt(client, SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof limit);
      static_cast<void>(::send(client, text.data(), text.size(), MSG_NOSIGNAL));
      ::close(client);
    }
  }

  std::function<std::string()> line_;
  int fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

}  // namespace carousel::examples::sd_server
