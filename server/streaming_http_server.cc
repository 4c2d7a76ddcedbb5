#include "server/streaming_http_server.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/logging.h"
#include "nlohmann/json.hpp"
#include "server/listen_socket.h"
#include "server/streaming_http_connection.h"
#include "server/streaming_http_handler_pool.h"

namespace hkv {
namespace {

constexpr int kAcceptsPerRound = 64;
constexpr absl::Duration kAcceptBackoff = absl::Milliseconds(100);

std::string ErrorJson(int status, const std::string& message) {
  nlohmann::json j = {{"error",
                       {{"message", message},
                        {"type", status >= 500 ? "server_error" : "invalid_request_error"},
                        {"param", nullptr},
                        {"code", status}}}};
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

int Ms(absl::Duration d) {
  return static_cast<int>(std::clamp<int64_t>(absl::ToInt64Milliseconds(d) + 1, 0, 1000));
}

}  // namespace

std::string HttpRequest::Header(const std::string& name) const {
  for (const auto& [n, v] : headers) {
    if (n == name) return v;
  }
  return "";
}

StreamingHttpServer::StreamingHttpServer(HttpRouteHandler handler, StreamingHttpLimits limits)
    : handler_(std::move(handler)), limits_(limits), mailbox_(std::make_shared<Mailbox>()) {}

StreamingHttpServer::~StreamingHttpServer() { Stop(); }

absl::StatusOr<int> StreamingHttpServer::Start(const std::string& host, int port,
                                               const std::string& flag) {
  if (!mailbox_->event.valid()) return absl::InternalError("eventfd: " + tcp::ErrnoText(errno));
  absl::StatusOr<tcp::Fd> listener = ListenTcp(host, port, limits_.backlog, flag);
  if (!listener.ok()) return listener.status();
  listener_ = std::move(*listener);
  const int bound = BoundPort(listener_);
  pool_ = std::make_unique<HandlerPool>(&handler_, mailbox_, limits_.handler_threads,
                                        limits_.max_pending_handlers, &request_bytes_);
  thread_ = std::thread([this] { Run(); });
  return bound;
}

void StreamingHttpServer::Stop() {
  if (!thread_.joinable()) return;
  stop_ = true;
  {
    absl::MutexLock lock(&mailbox_->mu);
    mailbox_->Signal();
  }
  thread_.join();  // The loop abandons every connection's source as it exits.
  pool_.reset();   // Joins the handlers; what they posted since is abandoned below.
  std::vector<uint64_t> ready;
  std::vector<std::pair<uint64_t, HttpReply>> replies;
  mailbox_->Take(&ready, &replies);
  for (auto& [serial, reply] : replies) {
    if (reply.source != nullptr) reply.source->Abandon();
  }
  listener_.Reset();
}

void StreamingHttpServer::Run() {
  BlockSigpipeOnThisThread();
  std::vector<pollfd> fds;
  std::vector<uint64_t> serials;
  std::vector<uint64_t> ready;
  std::vector<std::pair<uint64_t, HttpReply>> replies;
  while (!stop_.load()) {
    absl::Time next = absl::Now() + absl::Seconds(1);
    fds.clear();
    serials.clear();
    fds.push_back({mailbox_->event.get(), POLLIN, 0});
    const bool accepting = absl::Now() >= accept_paused_until_;
    fds.push_back({accepting ? listener_.get() : -1, POLLIN, 0});
    if (!accepting) next = std::min(next, accept_paused_until_);
    for (const auto& [serial, c] : conns_) {
      short events = POLLIN | POLLRDHUP;
      if (c->unsent() > 0 || c->io.want_write()) events |= POLLOUT;
      fds.push_back({c->fd.get(), events, 0});
      serials.push_back(serial);
      next = std::min(next, c->deadline);
    }
    if (::poll(fds.data(), fds.size(), Ms(next - absl::Now())) < 0 && errno != EINTR) {
      HKV_LOG(ERROR) << "http api: poll: " << tcp::ErrnoText(errno);
      break;
    }
    for (size_t i = 2; i < fds.size(); ++i) {
      if (fds[i].revents == 0) continue;
      auto it = conns_.find(serials[i - 2]);
      if (it == conns_.end()) continue;
      Connection* c = it->second.get();
      // A TLS session may need the socket writable to go on reading (its handshake).
      if ((fds[i].revents & (POLLIN | POLLRDHUP | POLLHUP | POLLERR)) ||
          ((fds[i].revents & POLLOUT) && c->io.want_write() && c->unsent() == 0)) {
        OnReadable(c);
      }
      if (c->fd.valid() && c->unsent() > 0 && !Flush(c)) c->fd.Reset();
      if (!c->fd.valid()) {
        c->Abandon();
        conns_.erase(it);
      }
    }
    mailbox_->Take(&ready, &replies);
    for (auto& [serial, reply] : replies) Install(serial, std::move(reply));
    for (uint64_t serial : ready) {
      auto it = conns_.find(serial);
      if (it == conns_.end() || it->second->state != Connection::State::kReplying) continue;
      PollSource(it->second.get());
      if (!Flush(it->second.get())) {
        it->second->Abandon();
        conns_.erase(it);
      }
    }
    ready.clear();
    replies.clear();
    Expire(absl::Now());
    if (fds[1].revents & POLLIN) AcceptAll();
    open_connections_ = static_cast<int>(conns_.size());
  }
  for (auto& [serial, c] : conns_) c->Abandon();
  conns_.clear();
  open_connections_ = 0;
}

void StreamingHttpServer::Expire(absl::Time now) {
  for (auto it = conns_.begin(); it != conns_.end();) {
    Connection* c = it->second.get();
    if (now < c->deadline) {
      ++it;
      continue;
    }
    if (c->state == Connection::State::kReading) {
      FixedReply(c, 408, "the request was not received in time");
      [[maybe_unused]] bool sent = Flush(c);
    }
    c->Abandon();
    conns_.erase(it++);
  }
}

void StreamingHttpServer::AcceptAll() {
  for (int i = 0; i < kAcceptsPerRound; ++i) {
    const int fd = ::accept4(listener_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        accept_paused_until_ = absl::Now() + kAcceptBackoff;
      }
      return;
    }
    const absl::Time now = absl::Now();
    if (static_cast<int>(conns_.size()) >= limits_.max_connections) {
      // Make room by dropping the connection that has had the longest to send its request;
      // connections with a request in the engine are never dropped for a newcomer.
      auto oldest = conns_.end();
      for (auto it = conns_.begin(); it != conns_.end(); ++it) {
        if (it->second->state != Connection::State::kReading) continue;
        if (oldest == conns_.end() || it->second->accepted < oldest->second->accepted) oldest = it;
      }
      if (oldest == conns_.end()) {
        if (tls_ != nullptr) {  // No session to say it in.
          tcp::CloseFd(fd);
          continue;
        }
        const std::string busy = HttpResponseHead(503, "application/json", {{"Retry-After", "1"}}) +
                                 "Content-Length: 0\r\nConnection: close\r\n\r\n";
        [[maybe_unused]] ssize_t n =
            ::send(fd, busy.data(), busy.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
        tcp::CloseFd(fd);
        continue;
      }
      FixedReply(oldest->second.get(), 503, "too many connections");
      [[maybe_unused]] bool sent = Flush(oldest->second.get());
      conns_.erase(oldest);
    }
    auto c = std::make_unique<Connection>();
    c->serial = next_serial_++;
    c->fd = tcp::Fd(fd);
    // The handshake happens in the first reads, under the same deadline as the head.
    if (!c->io.Begin(fd, tls_)) continue;
    c->request_bytes = &request_bytes_;
    c->accepted = now;
    c->deadline = now + limits_.request_timeout;
    conns_[c->serial] = std::move(c);
  }
}

void StreamingHttpServer::Dispatch(Connection* c, HttpRequest request) {
  c->state = Connection::State::kHandling;
  c->deadline = absl::InfiniteFuture();  // Handlers are bounded; the client may still leave.
  if (pool_->TryPush(c->serial, std::move(request), c->counted)) {
    c->counted = 0;  // The job gives them back.
  } else {
    FixedReply(c, 503, "the server is busy: too many requests waiting for a handler");
  }
}

void StreamingHttpServer::Install(uint64_t serial, HttpReply reply) {
  auto it = conns_.find(serial);
  if (it == conns_.end() || it->second->state != Connection::State::kHandling) {
    if (reply.source != nullptr) reply.source->Abandon();  // The client left meanwhile.
    return;
  }
  Connection* c = it->second.get();
  c->state = Connection::State::kReplying;
  if (reply.source == nullptr) {
    Writer(c).Respond(reply.status, reply.content_type, std::move(reply.headers),
                      std::move(reply.body));
  } else {
    c->source = std::move(reply.source);
    PollSource(c);
  }
  if (!Flush(c)) {
    c->Abandon();
    conns_.erase(it);
  }
}

void StreamingHttpServer::PollSource(Connection* c) {
  if (c->source == nullptr || c->finished) return;
  if (c->unsent() >= limits_.max_buffered_bytes) {
    c->paused = true;
    return;
  }
  c->paused = false;
  Writer writer(c);
  c->source->Poll(&writer);
  if (c->finished) c->source.reset();  // Complete: nothing to abandon.
}

void StreamingHttpServer::FixedReply(Connection* c, int status, const std::string& message) {
  c->state = Connection::State::kReplying;
  HttpHeaders headers;
  if (status == 503 || status == 429) headers.emplace_back("Retry-After", "1");
  Writer(c).Respond(status, "application/json", std::move(headers), ErrorJson(status, message));
  c->in.clear();
  c->deadline = absl::Now() + limits_.write_timeout;
}

}  // namespace hkv
