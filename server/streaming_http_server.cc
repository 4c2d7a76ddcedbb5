#include "server/streaming_http_server.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <deque>
#include <mutex>

#include "absl/base/thread_annotations.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/logging.h"
#include "nlohmann/json.hpp"
#include "server/http_status.h"
#include "server/listen_socket.h"
#include "server/tls/tls_socket.h"

namespace hkv {
namespace {

// After the reply is sent, how long leftovers are read and dropped before the socket closes
// (closing with unread input resets the connection and can lose the reply on the client side).
constexpr absl::Duration kLinger = absl::Seconds(1);
constexpr int kAcceptsPerRound = 64;
constexpr absl::Duration kAcceptBackoff = absl::Milliseconds(100);


std::string Head(int status, const std::string& content_type, const HttpHeaders& headers) {
  std::string head = absl::StrCat("HTTP/1.1 ", status, " ", HttpReasonPhrase(status),
                                  "\r\nContent-Type: ", content_type, "\r\n");
  for (const auto& [name, value] : headers) absl::StrAppend(&head, name, ": ", value, "\r\n");
  return head;
}

std::string ErrorJson(int status, const std::string& message) {
  nlohmann::json j = {{"error",
                       {{"message", message},
                        {"type", status >= 500 ? "server_error" : "invalid_request_error"},
                        {"param", nullptr},
                        {"code", status}}}};
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

size_t HeadEnd(const std::string& in, size_t from) {
  from = from >= 3 ? from - 3 : 0;
  const size_t crlf = in.find("\r\n\r\n", from);
  if (crlf != std::string::npos) return crlf + 4;
  const size_t lf = in.find("\n\n", from);
  return lf == std::string::npos ? std::string::npos : lf + 2;
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

// Replies handed back by the handler threads and wake-ups from reply sources, for the server
// thread; an eventfd wakes its poll. Thread-safe.
struct StreamingHttpServer::Mailbox {
  absl::Mutex mu;
  std::vector<uint64_t> ready ABSL_GUARDED_BY(mu);
  std::vector<std::pair<uint64_t, HttpReply>> replies ABSL_GUARDED_BY(mu);
  bool signaled ABSL_GUARDED_BY(mu) = false;
  tcp::Fd event{::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)};

  void Signal() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (signaled) return;
    signaled = true;
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(event.get(), &one, sizeof(one));
  }
  void Wake(uint64_t serial) {
    absl::MutexLock lock(&mu);
    ready.push_back(serial);
    Signal();
  }
  void Post(uint64_t serial, HttpReply reply) {
    absl::MutexLock lock(&mu);
    replies.emplace_back(serial, std::move(reply));
    Signal();
  }
  void Take(std::vector<uint64_t>* r, std::vector<std::pair<uint64_t, HttpReply>>* p) {
    absl::MutexLock lock(&mu);
    uint64_t count;
    [[maybe_unused]] ssize_t n = ::read(event.get(), &count, sizeof(count));
    signaled = false;
    r->swap(ready);
    p->swap(replies);
  }
};

// A fixed set of threads running the route handler over a bounded queue of requests.
class StreamingHttpServer::HandlerPool {
 public:
  HandlerPool(const HttpRouteHandler* handler, std::shared_ptr<Mailbox> mailbox, int threads,
              int max_pending, std::atomic<int64_t>* request_bytes)
      : handler_(handler),
        mailbox_(std::move(mailbox)),
        max_pending_(max_pending),
        request_bytes_(request_bytes) {
    for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { Work(); });
  }
  ~HandlerPool() {
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
    }
    for (std::thread& t : threads_) t.join();
  }
  // False when the queue is full. Else the job owns `bytes` of the request byte count, and
  // gives them back once its handler returned.
  bool TryPush(uint64_t serial, HttpRequest request, int64_t bytes) {
    absl::MutexLock lock(&mu_);
    if (static_cast<int>(jobs_.size()) >= max_pending_) return false;
    jobs_.push_back({serial, std::move(request), bytes});
    return true;
  }

 private:
  void Work() {
    while (true) {
      Job job;
      {
        absl::MutexLock lock(&mu_);
        auto ready = [this]()
                         ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_ || !jobs_.empty(); };
        mu_.Await(absl::Condition(&ready));
        if (stop_) return;
        job = std::move(jobs_.front());
        jobs_.pop_front();
      }
      const uint64_t serial = job.serial;
      std::shared_ptr<Mailbox> mailbox = mailbox_;
      HttpReply reply = (*handler_)(job.request, [mailbox, serial] { mailbox->Wake(serial); });
      job.request = HttpRequest();
      *request_bytes_ -= job.bytes;
      mailbox_->Post(serial, std::move(reply));
    }
  }

  struct Job {
    uint64_t serial = 0;
    HttpRequest request;
    int64_t bytes = 0;
  };
  const HttpRouteHandler* handler_;
  const std::shared_ptr<Mailbox> mailbox_;
  const int max_pending_;
  std::atomic<int64_t>* const request_bytes_;
  absl::Mutex mu_;
  std::deque<Job> jobs_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

struct StreamingHttpServer::Connection {
  enum class State { kReading, kHandling, kReplying, kLingering };
  uint64_t serial = 0;
  // Declared before `io`, destroyed after it: a TLS session is freed before its socket closes.
  tcp::Fd fd;
  TlsSocket io;
  State state = State::kReading;
  absl::Time accepted;
  absl::Time deadline = absl::InfiniteFuture();
  std::string in;
  size_t head_end = 0;  // 0 until the head is complete.
  size_t body_bytes = 0;
  HttpRequest request;
  std::string out;
  size_t sent = 0;
  std::unique_ptr<HttpReplySource> source;
  bool started = false;   // A head was written.
  bool finished = false;  // The whole reply is in `out`.
  bool paused = false;    // The source was not polled: `out` was over the cap.
  // Request bytes this connection holds in the server's count (given back when it goes).
  std::atomic<int64_t>* request_bytes = nullptr;
  int64_t counted = 0;

  ~Connection() {
    if (request_bytes != nullptr) *request_bytes -= counted;
  }

  size_t unsent() const { return out.size() - sent; }
  void Abandon() {
    if (source != nullptr) source->Abandon();
    source.reset();
  }
};

class StreamingHttpServer::Writer : public HttpReplyWriter {
 public:
  explicit Writer(Connection* c) : c_(c) {}
  void Respond(int status, const std::string& content_type, HttpHeaders headers,
               std::string body) override {
    if (c_->started) return;
    headers.emplace_back("Content-Length", absl::StrCat(body.size()));
    headers.emplace_back("Connection", "close");
    c_->out += Head(status, content_type, headers) + "\r\n" + body;
    c_->started = c_->finished = true;
  }
  void Start(int status, const std::string& content_type, HttpHeaders headers) override {
    if (c_->started) return;
    headers.emplace_back("Transfer-Encoding", "chunked");
    headers.emplace_back("Cache-Control", "no-cache");
    headers.emplace_back("Connection", "close");
    c_->out += Head(status, content_type, headers) + "\r\n";
    c_->started = true;
  }
  void Write(std::string_view data) override {
    if (!c_->started || c_->finished || data.empty()) return;
    absl::StrAppend(&c_->out, absl::Hex(data.size()), "\r\n");
    c_->out.append(data.data(), data.size());
    c_->out += "\r\n";
  }
  void Finish() override {
    if (!c_->started || c_->finished) return;
    c_->out += "0\r\n\r\n";
    c_->finished = true;
  }

 private:
  Connection* c_;
};

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
        const std::string busy = Head(503, "application/json", {{"Retry-After", "1"}}) +
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

void StreamingHttpServer::OnReadable(Connection* c) {
  char buf[16384];
  while (c->fd.valid()) {
    const ssize_t n = c->io.Read(buf, sizeof(buf));
    if (n == -1) return;
    if (n <= 0) {  // The client closed (or reset) the connection, or its handshake failed.
      c->fd.Reset();
      return;
    }
    if (c->state != Connection::State::kReading) continue;  // Leftovers: dropped.
    if (request_bytes_.fetch_add(n) + n > limits_.max_request_bytes_in_flight) {
      request_bytes_ -= n;
      return FixedReply(c, 503, "the server is busy: too many request bytes in flight");
    }
    c->counted += n;
    const size_t before = c->in.size();
    c->in.append(buf, static_cast<size_t>(n));
    if (c->head_end == 0) {
      const size_t end = HeadEnd(c->in, before);
      if (end == std::string::npos) {
        if (c->in.size() > limits_.max_header_bytes) {
          return FixedReply(c, 431, "the request head is too large");
        }
        continue;
      }
      if (end > limits_.max_header_bytes) {
        return FixedReply(c, 431, "the request head is too large");
      }
      c->head_end = end;
      std::vector<std::string> lines =
          absl::StrSplit(c->in.substr(0, end), '\n', absl::SkipWhitespace());
      std::vector<std::string> parts =
          absl::StrSplit(absl::StripSuffix(lines.empty() ? "" : lines[0], "\r"), ' ');
      if (parts.size() != 3 || !absl::StartsWith(parts[2], "HTTP/1.")) {
        return FixedReply(c, 400, "malformed request line");
      }
      c->request.method = parts[0];
      c->request.path = parts[1].substr(0, parts[1].find('?'));
      for (size_t i = 1; i < lines.size(); ++i) {
        const absl::string_view line = absl::StripSuffix(lines[i], "\r");
        const size_t colon = line.find(':');
        if (colon == absl::string_view::npos || colon == 0) {
          return FixedReply(c, 400, "malformed header line");
        }
        c->request.headers.emplace_back(
            absl::AsciiStrToLower(line.substr(0, colon)),
            std::string(absl::StripAsciiWhitespace(line.substr(colon + 1))));
      }
      if (!c->request.Header("transfer-encoding").empty()) {
        return FixedReply(c, 411, "send the body with a Content-Length (no chunked requests)");
      }
      const std::string length = c->request.Header("content-length");
      uint64_t body = 0;
      if (!length.empty() && !absl::SimpleAtoi(length, &body)) {
        return FixedReply(c, 400, "bad Content-Length");
      }
      if (body > limits_.max_body_bytes) {
        return FixedReply(c, 413,
                          absl::StrCat("the request body is ", body, " bytes; at most ",
                                       limits_.max_body_bytes, " (--http-max-body-bytes)"));
      }
      c->body_bytes = static_cast<size_t>(body);
      if (body > 0 && absl::EqualsIgnoreCase(c->request.Header("expect"), "100-continue")) {
        c->out += "HTTP/1.1 100 Continue\r\n\r\n";  // Flushed once this read is done.
      }
    }
    if (c->in.size() >= c->head_end + c->body_bytes) {
      c->request.body = c->in.substr(c->head_end, c->body_bytes);
      c->in.clear();
      c->in.shrink_to_fit();
      Dispatch(c, std::move(c->request));
    }
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

bool StreamingHttpServer::Flush(Connection* c) {
  const absl::Time now = absl::Now();
  bool progress = false;
  while (c->unsent() > 0) {
    const ssize_t n = c->io.Write(c->out.data() + c->sent, c->unsent());
    if (n == -1) break;
    if (n <= 0) return false;
    c->sent += static_cast<size_t>(n);
    progress = true;
  }
  if (c->unsent() == 0) {
    c->out.clear();
    c->sent = 0;
  } else if (c->sent > (1 << 16)) {
    c->out.erase(0, c->sent);
    c->sent = 0;
  }
  if (c->state == Connection::State::kLingering) return true;
  if (c->finished && c->unsent() == 0) {
    c->io.ShutdownWrite();
    c->state = Connection::State::kLingering;
    c->deadline = now + kLinger;
    return true;
  }
  if (c->state != Connection::State::kReplying) return true;
  if (c->unsent() == 0) {
    c->deadline = absl::InfiniteFuture();  // Waiting on the engine, not on the client.
  } else if (progress || c->deadline == absl::InfiniteFuture()) {
    c->deadline = now + limits_.write_timeout;
  }
  if (c->paused && c->unsent() < limits_.max_buffered_bytes) {
    PollSource(c);
    if (c->unsent() > 0) return Flush(c);
  }
  return true;
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
