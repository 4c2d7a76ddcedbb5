#pragma once
// Request ids as clients see them (GenerateRequest.request_id, Abort). A client may name its
// request; otherwise the server makes an id in a namespace reserved for it:
//
//   hkv-<32 lowercase hex digits>   128 bits from the OS entropy source (common/random.h)
//
// so a server id can neither be guessed (and aborted by another client) nor taken first by a
// client (which would make someone's anonymous request fail ALREADY_EXISTS).
//
// Thread-safe: pure functions.

#include <cstddef>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace hkv {

// Server-made ids start with this; client ids may not.
inline constexpr char kServerRequestIdPrefix[] = "hkv-";
// The longest request id a client may send.
inline constexpr size_t kMaxRequestIdBytes = 128;

// Returns a fresh server id. INTERNAL if the OS has no entropy to give.
absl::StatusOr<std::string> NewServerRequestId();

// INVALID_ARGUMENT unless `id` is 1 to kMaxRequestIdBytes bytes of printable ASCII without
// spaces (0x21-0x7e). What Abort accepts: server ids pass.
absl::Status ValidateRequestIdSyntax(std::string_view id);

// ValidateRequestIdSyntax, and INVALID_ARGUMENT for an id in the server's namespace. What a
// client may name a new request.
absl::Status ValidateClientRequestId(std::string_view id);

}  // namespace hkv
