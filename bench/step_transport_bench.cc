// One multi-node engine step's transport on loopback, three ways in one run: node 0 encodes the
// step, sends it, node 1 decodes it and answers with its tokens, node 0 decodes the answer. The
// round trip is what node 0 adds to a step before its ranks can finish it.
//
//   (a) tcp+codec:   executor/step_codec.h bytes over a plain TCP socket with length-prefixed
//                    frames (the transport before the gRPC stream, copied here as the baseline);
//   (b) grpc+codec:  the same bytes in a `bytes` field over the production gRPC stream
//                    (executor/step_channel.h: AcceptFollowers / ConnectToLeader);
//   (c) grpc+native: protobuf-native step messages (bench/step_native.proto: whole page tables,
//                    no delta form) over a gRPC stream of the same settings.
//
//   step_transport_bench [--steps N] [--rounds R]
// Steps are decode steps at Llama-3-8B's page-table shape: 32 layers x 8 KV heads = 256 rows
// per sequence, 1k-1.3k tokens of context in 16-token blocks, every row its own blocks. Prints
// the median and p90 microseconds per step and the step message's bytes (payload only: TCP adds
// a 12-byte frame header, gRPC its HTTP/2 framing). N steps at 32 sequences, N/4 at 256, after
// 20 warm-up steps, in R rounds (defaults 300 and 3).

#include <arpa/inet.h>
#include <grpcpp/grpcpp.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "bench/step_native.grpc.pb.h"
#include "common/logging.h"
#include "executor/step_channel.h"
#include "executor/step_codec.h"

namespace hkv {
namespace {

constexpr int32_t kLayers = 32, kKvHeads = 8, kBlockSize = 16, kWarmup = 20;

// Decode step `step` of `num_seqs` sequences; sequence i has 1024 + 37 * (i % 8) + step tokens.
Batch MakeStep(int32_t num_seqs, int32_t step) {
  Batch b;
  b.num_layers = kLayers;
  b.num_kv_heads = kKvHeads;
  b.block_size = kBlockSize;
  b.kv_indptr = {0};
  for (int32_t i = 0; i < num_seqs; ++i) {
    SequenceStep s;
    s.id = 1000 + i;
    s.start_pos = 1024 + 37 * (i % 8) + step;
    s.tokens = {3 + (s.start_pos * 7) % 500};
    s.sample = true;
    s.sample_step = step;
    s.sampling.seed = 17 + i;
    const int32_t blocks = (s.start_pos + 1 + kBlockSize - 1) / kBlockSize;
    for (int32_t r = 0; r < kLayers * kKvHeads; ++r) {
      const BlockId base = (i * kLayers * kKvHeads + r) * 128;
      for (int32_t k = 0; k < blocks; ++k) b.kv_indices.push_back(base + k);
      b.kv_indptr.push_back(static_cast<int32_t>(b.kv_indices.size()));
      b.kv_len_before.push_back(s.start_pos);
      b.kv_len_after.push_back(s.start_pos + 1);
    }
    b.seqs.push_back(std::move(s));
  }
  return b;
}

BatchResult Answer(const Batch& b) {
  BatchResult r;
  for (const SequenceStep& s : b.seqs) r.seqs.push_back({s.id, -1, {}, {}});
  return r;
}

int FreePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  HKV_CHECK(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
  HKV_CHECK(::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0);
  ::close(fd);
  return ntohs(a.sin_port);
}

struct Timing {
  std::vector<double> us;
  double bytes = 0;  // step message bytes, mean over the timed steps
};

// Builds each step (untimed), then times `one_step(batch)`, which returns the step message's
// bytes, over warm-up and timed steps.
Timing Measure(int32_t num_seqs, int32_t steps,
               const std::function<size_t(const Batch&)>& one_step) {
  Timing t;
  for (int32_t s = 0; s < kWarmup + steps; ++s) {
    const Batch batch = MakeStep(num_seqs, s);
    const auto start = std::chrono::steady_clock::now();
    const size_t bytes = one_step(batch);
    const auto end = std::chrono::steady_clock::now();
    if (s < kWarmup) continue;
    t.us.push_back(std::chrono::duration<double, std::micro>(end - start).count());
    t.bytes += static_cast<double>(bytes) / steps;
  }
  return t;
}

// ---- For reference: encode + decode of the step and its answer in one thread, no transport.

Timing RunCodecOnly(int32_t num_seqs, int32_t steps) {
  BatchEncoder encoder;
  BatchDecoder decoder;
  return Measure(num_seqs, steps, [&](const Batch& batch) {
    absl::StatusOr<std::vector<uint8_t>> bytes = encoder.Encode(batch);
    HKV_CHECK(bytes.ok()) << bytes.status();
    absl::StatusOr<Batch> b = decoder.Decode(*bytes);
    HKV_CHECK(b.ok()) << b.status();
    HKV_CHECK(DecodeBatchResult(EncodeBatchResult(Answer(*b))).ok());
    return bytes->size();
  });
}

// ---- (a) the baseline: length-prefixed frames {u32 type, u64 length, payload} over TCP.

void WriteAll(int fd, const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t k = ::send(fd, p, n, MSG_NOSIGNAL);
    HKV_CHECK(k > 0) << "send: " << std::strerror(errno);
    p += k;
    n -= static_cast<size_t>(k);
  }
}

bool ReadAll(int fd, void* data, size_t n) {
  char* p = static_cast<char*>(data);
  while (n > 0) {
    const ssize_t k = ::recv(fd, p, n, 0);
    if (k <= 0) return false;
    p += k;
    n -= static_cast<size_t>(k);
  }
  return true;
}

void SendFrame(int fd, uint32_t type, const std::vector<uint8_t>& payload) {
  uint8_t header[12];
  const uint64_t n = payload.size();
  std::memcpy(header, &type, 4);
  std::memcpy(header + 4, &n, 8);
  WriteAll(fd, header, sizeof(header));
  WriteAll(fd, payload.data(), payload.size());
}

bool ReceiveFrame(int fd, uint32_t* type, std::vector<uint8_t>* payload) {
  uint8_t header[12];
  if (!ReadAll(fd, header, sizeof(header))) return false;
  uint64_t n = 0;
  std::memcpy(type, header, 4);
  std::memcpy(&n, header + 4, 8);
  payload->resize(n);
  return ReadAll(fd, payload->data(), n);
}

int TcpSocket() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return fd;
}

Timing RunTcp(int32_t num_seqs, int32_t steps) {
  const int listener = TcpSocket();
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  HKV_CHECK(::bind(listener, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
  HKV_CHECK(::getsockname(listener, reinterpret_cast<sockaddr*>(&a), &len) == 0);
  HKV_CHECK(::listen(listener, 1) == 0);
  std::thread follower([a] {
    const int fd = TcpSocket();
    HKV_CHECK(::connect(fd, reinterpret_cast<const sockaddr*>(&a), sizeof(a)) == 0);
    BatchDecoder decoder;
    uint32_t type = 0;
    std::vector<uint8_t> payload;
    while (ReceiveFrame(fd, &type, &payload) && type == 6) {
      absl::StatusOr<Batch> b = decoder.Decode(payload);
      HKV_CHECK(b.ok()) << b.status();
      SendFrame(fd, 7, EncodeBatchResult(Answer(*b)));
    }
    ::close(fd);
  });
  const int fd = ::accept(listener, nullptr, nullptr);
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  BatchEncoder encoder;
  Timing t = Measure(num_seqs, steps, [&](const Batch& batch) {
    absl::StatusOr<std::vector<uint8_t>> bytes = encoder.Encode(batch);
    HKV_CHECK(bytes.ok()) << bytes.status();
    SendFrame(fd, 6, *bytes);
    uint32_t type = 0;
    std::vector<uint8_t> answer;
    HKV_CHECK(ReceiveFrame(fd, &type, &answer) && type == 7);
    HKV_CHECK(DecodeBatchResult(answer).ok());
    return bytes->size() + 12;
  });
  SendFrame(fd, 8, {});
  follower.join();
  ::close(fd);
  ::close(listener);
  return t;
}

// ---- (b) production: StepConnection over the gRPC stream.

Timing RunGrpcCodec(int32_t num_seqs, int32_t steps) {
  const int port = FreePort();
  std::thread follower([port] {
    auto conn = ConnectToLeader(DistLayout{"127.0.0.1", port, 2, 1}, "bench", absl::Seconds(20));
    HKV_CHECK(conn.ok()) << conn.status();
    BatchDecoder decoder;
    for (;;) {
      absl::StatusOr<StepConnection::Message> m = (*conn)->Receive(absl::Seconds(60));
      HKV_CHECK(m.ok()) << m.status();
      if (m->type != StepMessage::kStep) break;
      absl::StatusOr<Batch> b = decoder.Decode(m->payload);
      HKV_CHECK(b.ok()) << b.status();
      HKV_CHECK((*conn)
                    ->Send(StepMessage::kResult, EncodeBatchResult(Answer(*b)), absl::Seconds(10))
                    .ok());
    }
  });
  auto followers = AcceptFollowers(DistLayout{"", port, 2, 0}, "bench", absl::Seconds(20));
  HKV_CHECK(followers.ok()) << followers.status();
  StepConnection* conn = (*followers)[0].get();
  BatchEncoder encoder;
  Timing t = Measure(num_seqs, steps, [&](const Batch& batch) {
    absl::StatusOr<std::vector<uint8_t>> bytes = encoder.Encode(batch);
    HKV_CHECK(bytes.ok()) << bytes.status();
    HKV_CHECK(conn->Send(StepMessage::kStep, *bytes, absl::Seconds(10)).ok());
    absl::StatusOr<std::vector<uint8_t>> answer =
        conn->Expect(StepMessage::kResult, absl::Seconds(10));
    HKV_CHECK(answer.ok()) << answer.status();
    HKV_CHECK(DecodeBatchResult(*answer).ok());
    return bytes->size();
  });
  HKV_CHECK(conn->Send(StepMessage::kStop, {}, absl::Seconds(10)).ok());
  follower.join();
  return t;
}

// ---- (c) protobuf-native steps over a gRPC stream.

void ToNative(const Batch& b, bench::NativeStep* n) {
  n->set_num_layers(b.num_layers);
  n->set_num_kv_heads(b.num_kv_heads);
  n->set_block_size(b.block_size);
  for (const SequenceStep& s : b.seqs) {
    bench::NativeSeq* q = n->add_seqs();
    q->set_id(s.id);
    q->mutable_tokens()->Add(s.tokens.begin(), s.tokens.end());
    q->set_start_pos(s.start_pos);
    q->set_sample(s.sample);
    q->set_sample_step(s.sample_step);
    q->set_temperature(s.sampling.temperature);
    q->set_top_k(s.sampling.top_k);
    q->set_top_p(s.sampling.top_p);
    q->set_seed(s.sampling.seed);
  }
  n->mutable_kv_indptr()->Add(b.kv_indptr.begin(), b.kv_indptr.end());
  n->mutable_kv_indices()->Add(b.kv_indices.begin(), b.kv_indices.end());
  n->mutable_kv_len_before()->Add(b.kv_len_before.begin(), b.kv_len_before.end());
  n->mutable_kv_len_after()->Add(b.kv_len_after.begin(), b.kv_len_after.end());
}

Batch FromNative(const bench::NativeStep& n) {
  Batch b;
  b.num_layers = n.num_layers();
  b.num_kv_heads = n.num_kv_heads();
  b.block_size = n.block_size();
  for (const bench::NativeSeq& q : n.seqs()) {
    SequenceStep s;
    s.id = q.id();
    s.tokens.assign(q.tokens().begin(), q.tokens().end());
    s.start_pos = q.start_pos();
    s.sample = q.sample();
    s.sample_step = q.sample_step();
    s.sampling = {q.temperature(), q.top_k(), q.top_p(), q.seed()};
    b.seqs.push_back(std::move(s));
  }
  b.kv_indptr.assign(n.kv_indptr().begin(), n.kv_indptr().end());
  b.kv_indices.assign(n.kv_indices().begin(), n.kv_indices().end());
  b.kv_len_before.assign(n.kv_len_before().begin(), n.kv_len_before().end());
  b.kv_len_after.assign(n.kv_len_after().begin(), n.kv_len_after().end());
  return b;
}

class NativeService final : public bench::NativeSteps::Service {
  grpc::Status Run(
      grpc::ServerContext*,
      grpc::ServerReaderWriter<bench::NativeAnswer, bench::NativeStep>* stream) override {
    bench::NativeStep step;
    while (stream->Read(&step) && !step.stop()) {
      const Batch b = FromNative(step);
      bench::NativeAnswer answer;
      for (const SequenceStep& s : b.seqs) {
        answer.add_ids(s.id);
        answer.add_tokens(-1);
      }
      stream->Write(answer);
    }
    return grpc::Status::OK;
  }
};

Timing RunGrpcNative(int32_t num_seqs, int32_t steps) {
  // The follower serves here (either end may); the transport's settings are the same.
  NativeService service;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  builder.SetMaxReceiveMessageSize(1 << 30);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(1 << 30);
  args.SetMaxSendMessageSize(1 << 30);
  auto stub = bench::NativeSteps::NewStub(grpc::CreateCustomChannel(
      "127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials(), args));
  grpc::ClientContext context;
  auto stream = stub->Run(&context);
  Timing t = Measure(num_seqs, steps, [&](const Batch& batch) {
    bench::NativeStep step;
    ToNative(batch, &step);
    HKV_CHECK(stream->Write(step));
    bench::NativeAnswer answer;
    HKV_CHECK(stream->Read(&answer));
    BatchResult r;  // what node 0 makes of the answer, as DecodeBatchResult does in (a) and (b)
    for (int i = 0; i < answer.ids_size(); ++i) r.seqs.push_back({answer.ids(i), -1, {}, {}});
    HKV_CHECK(r.seqs.size() == batch.seqs.size());
    return step.ByteSizeLong();
  });
  bench::NativeStep stop;
  stop.set_stop(true);
  stream->Write(stop);
  stream->WritesDone();
  HKV_CHECK(stream->Finish().ok());
  server->Shutdown();
  return t;
}

double Percentile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(q * (v.size() - 1) + 0.5))];
}

}  // namespace
}  // namespace hkv

int main(int argc, char** argv) {
  int32_t steps = 300, rounds = 3;
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], "--steps") == 0) steps = std::max(1, std::atoi(argv[i + 1]));
    if (std::strcmp(argv[i], "--rounds") == 0) rounds = std::max(1, std::atoi(argv[i + 1]));
  }
  struct Way {
    const char* name;
    hkv::Timing (*run)(int32_t, int32_t);
  };
  const Way ways[] = {{"codec only, no transport", hkv::RunCodecOnly},
                      {"(a) tcp+codec", hkv::RunTcp},
                      {"(b) grpc+codec", hkv::RunGrpcCodec},
                      {"(c) grpc+native", hkv::RunGrpcNative}};
  std::printf("| sequences | transport | median us/step | p90 us/step | bytes/step |\n");
  std::printf("|---:|---|---:|---:|---:|\n");
  for (int32_t seqs : {32, 256}) {
    const int32_t n = seqs == 32 ? steps : std::max(1, steps / 4);
    // The ways take turns, `rounds` times, so that a noisy moment of a shared machine does not
    // land on one of them only; each way's steps of all rounds are pooled.
    hkv::Timing pooled[4];
    for (int32_t r = 0; r < rounds; ++r) {
      for (int w = 0; w < 4; ++w) {
        const hkv::Timing t = ways[w].run(seqs, n);
        pooled[w].us.insert(pooled[w].us.end(), t.us.begin(), t.us.end());
        pooled[w].bytes = t.bytes;
      }
    }
    for (int w = 0; w < 4; ++w) {
      std::printf("| %d | %s | %.0f | %.0f | %.0f |\n", seqs, ways[w].name,
                  hkv::Percentile(pooled[w].us, 0.5), hkv::Percentile(pooled[w].us, 0.9),
                  pooled[w].bytes);
    }
    std::fflush(stdout);
  }
  return 0;
}
