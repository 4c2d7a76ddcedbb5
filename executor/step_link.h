#pragma once
// The two ends of a step connection's gRPC stream (executor/step_channel.h), behind the one
// interface StepConnection uses: write a message, read from an inbox the stream's reader fills.
// Node 0's end is a call of its StepTransport server (executor/step_rendezvous.cc); a follower's
// end is a client call (executor/step_channel.cc). Shared by those two files only.
//
// Thread-safe: Write may be called from any thread (calls are serialized); the inbox is filled
// by the stream's reader thread.

#include <cstdint>
#include <string>

#include "executor/step_channel.h"
#include "executor/step_inbox.h"
#include "hkv/internal/v1/step_transport.pb.h"

namespace hkv {

// 3: steps travel on a gRPC stream (StepTransport.Join), the hello is its first message.
inline constexpr uint32_t kStepProtocolVersion = 4;
// The call metadata that carries DistLayout::token from a follower to node 0.
inline constexpr char kDistTokenHeader[] = "x-hkv-dist-token";
// Largest reason text sent with kError.
inline constexpr size_t kMaxReasonBytes = 4096;

struct StepConnection::Impl {
  virtual ~Impl() = default;
  // Sends one message; false once the stream is broken or closed.
  virtual bool Write(const internal::v1::NodeMessage& message) = 0;
  virtual StepInbox& inbox() = 0;

  int32_t peer_node = -1;
};

// gRPC channel and server arguments both ends use: keepalive pings after 10 s without traffic,
// a connection whose pings go unanswered for 10 s is dropped (so a vanished host is noticed in
// about 20 s even while idle), pings allowed without calls or data, and messages up to
// StepConnection::kMaxPayloadBytes plus framing.
inline constexpr int kKeepaliveTimeMs = 10'000;
inline constexpr int kKeepaliveTimeoutMs = 10'000;
inline constexpr int kMaxMessageBytes = static_cast<int>(StepConnection::kMaxPayloadBytes + 65536);

// HOST:PORT, or [HOST]:PORT for an IPv6 address.
std::string StepAddress(const std::string& host, int port);

}  // namespace hkv
