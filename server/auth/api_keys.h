#pragma once
// ApiKeySet: the API keys a server accepts, each belonging to a tenant, and the check of one
// `authorization: Bearer KEY` header value against them. Shared by every front end (gRPC now,
// the HTTP API later): a front end passes the header's value and gets the caller's tenant, or
// UNAUTHENTICATED before it does any work for the request.
//
// Keys come from --api-key (a comma-separated list; each key is its own tenant, named "key1",
// "key2", ... in its order) and --api-key-file (one key per line, optionally followed by
// whitespace and a tenant name; blank lines and lines starting with '#' are skipped). Keys that
// name the same tenant share its limits. A key is 8 to 256 bytes of printable ASCII without
// spaces; a tenant name 1 to 64 bytes of [A-Za-z0-9._-].
//
// NOTE(ops): only SHA-256 digests of the keys are kept, and a presented key is compared with
// every digest in constant time (common/constant_time.h), so neither the position of a
// mismatch nor which key matched shows in the time of a refusal.
//
// Thread-safe: immutable after Load.

#include <array>
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace hkv {

// The longest authorization header value looked at; longer ones are refused unread.
inline constexpr size_t kMaxAuthorizationBytes = 1024;

struct ApiKeyEntry {
  std::string key;
  std::string tenant;
};

class ApiKeySet {
 public:
  ApiKeySet() = default;  // No keys: authentication is off.

  // Builds the set from the flag's comma-separated keys and a key file (either may be empty).
  // INVALID_ARGUMENT names the bad entry (by position, never by its text); NOT_FOUND a missing
  // file.
  static absl::StatusOr<ApiKeySet> Load(std::string_view flag_keys, const std::string& file);
  // Builds the set from entries; INVALID_ARGUMENT for a malformed key or tenant, or a key given
  // twice.
  static absl::StatusOr<ApiKeySet> FromEntries(const std::vector<ApiKeyEntry>& entries);

  // True when at least one key is configured (requests then need one).
  bool enabled() const { return !keys_.empty(); }
  size_t size() const { return keys_.size(); }
  // Returns the tenant of the key in an `authorization` header value ("Bearer KEY", the scheme
  // case-insensitive). UNAUTHENTICATED when the value is empty, too long, not a bearer token,
  // or no configured key.
  absl::StatusOr<std::string> Authenticate(std::string_view authorization) const;

 private:
  struct Key {
    std::array<unsigned char, 32> digest;
    std::string tenant;
  };
  std::vector<Key> keys_;
};

}  // namespace hkv
