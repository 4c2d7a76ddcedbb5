#pragma once
// What a request's headers say about it, independent of the front end: the client's request id
// (`x-request-id`), the W3C trace context (`traceparent`) and the API key (`authorization`).
// A front end passes a lookup over its headers (gRPC metadata now, HTTP headers later; names
// are lower case) and gets validated values back.
//
// Thread-safe: pure functions.

#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "grpcpp/server_context.h"

namespace hkv {

inline constexpr char kRequestIdHeader[] = "x-request-id";
inline constexpr char kTraceparentHeader[] = "traceparent";
inline constexpr char kAuthorizationHeader[] = "authorization";

// Returns the value of a header by its lower-case name, or nullopt when the request has none.
using HeaderLookup = std::function<std::optional<std::string_view>(std::string_view name)>;

// The request id the client chose in `x-request-id`: "" when absent; INVALID_ARGUMENT when it
// breaks the rules of client ids (server/request_id.h: at most 128 bytes of printable ASCII
// without spaces, not starting with "hkv-").
absl::StatusOr<std::string> RequestIdFromHeaders(const HeaderLookup& headers);

// The `traceparent` header when it is a well-formed W3C trace context
// (version-traceid-parentid-flags, lower-case hex, ids not all zero), else "": a malformed one is
// dropped, as the W3C recommendation says, not refused.
std::string TraceparentFromHeaders(const HeaderLookup& headers);

// A lookup over a gRPC call's client metadata (valid while `context` is).
HeaderLookup GrpcHeaders(const grpc::ServerContext& context);

}  // namespace hkv
