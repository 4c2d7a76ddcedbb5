#pragma once
// FinishReason: why a request ended. One vocabulary for every layer that reports it: the
// scheduler finishes requests with it, the engine and output processor pass it on, each
// RequestStream's last chunk carries it, and the gRPC service maps it onto the wire.
//
// Plain enum; thread-compatible.

#include <string_view>

namespace hkv {

enum class FinishReason {
  kNone,      // Not finished.
  kLength,    // max_tokens reached.
  kStop,      // A stop token or stop string.
  kEos,       // An end-of-sequence token.
  kAborted,   // Aborted by the client, a disconnect, a drain or the engine stopping.
  kError,     // Failed: the chunk's status says why.
  kDeadline,  // The request's deadline passed.
};

// Returns "none", "length", "stop", "eos", "aborted", "error" or "deadline".
std::string_view FinishReasonName(FinishReason reason);

}  // namespace hkv
