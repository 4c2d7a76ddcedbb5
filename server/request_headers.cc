#include "server/request_headers.h"

#include <algorithm>

#include "server/request_id.h"

namespace hkv {
namespace {

bool IsLowerHex(std::string_view s) {
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

bool AllZero(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return c == '0'; });
}

}  // namespace

absl::StatusOr<std::string> RequestIdFromHeaders(const HeaderLookup& headers) {
  std::optional<std::string_view> id = headers(kRequestIdHeader);
  if (!id.has_value()) return std::string();
  if (absl::Status s = ValidateClientRequestId(*id); !s.ok()) {
    return absl::InvalidArgumentError(std::string(kRequestIdHeader) +
                                      " header: " + std::string(s.message()));
  }
  return std::string(*id);
}

std::string TraceparentFromHeaders(const HeaderLookup& headers) {
  std::optional<std::string_view> v = headers(kTraceparentHeader);
  // 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>: 55 bytes for version 00.
  if (!v.has_value() || v->size() != 55) return "";
  const std::string_view t = *v;
  if (t[2] != '-' || t[35] != '-' || t[52] != '-') return "";
  const std::string_view version = t.substr(0, 2), trace = t.substr(3, 32),
                         parent = t.substr(36, 16), flags = t.substr(53, 2);
  if (!IsLowerHex(version) || version == "ff" || !IsLowerHex(trace) || !IsLowerHex(parent) ||
      !IsLowerHex(flags) || AllZero(trace) || AllZero(parent)) {
    return "";
  }
  return std::string(t);
}

HeaderLookup GrpcHeaders(const grpc::ServerContext& context) {
  const auto* metadata = &context.client_metadata();
  return [metadata](std::string_view name) -> std::optional<std::string_view> {
    auto it = metadata->find(grpc::string_ref(name.data(), name.size()));
    if (it == metadata->end()) return std::nullopt;
    return std::string_view(it->second.data(), it->second.size());
  };
}

}  // namespace hkv
