#include "server/auth/api_keys.h"

#include <openssl/sha.h>

#include <algorithm>
#include <fstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/constant_time.h"

namespace hkv {
namespace {

// Debian's Abseil has its own string_view type.
absl::string_view Absl(std::string_view s) { return absl::string_view(s.data(), s.size()); }

constexpr size_t kMinKeyBytes = 8;
constexpr size_t kMaxKeyBytes = 256;
constexpr size_t kMaxTenantBytes = 64;

std::array<unsigned char, 32> Digest(std::string_view s) {
  std::array<unsigned char, 32> out;
  SHA256(reinterpret_cast<const unsigned char*>(s.data()), s.size(), out.data());
  return out;
}

absl::Status CheckKey(std::string_view key, const std::string& where) {
  if (key.size() < kMinKeyBytes || key.size() > kMaxKeyBytes) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": an API key must be ", kMinKeyBytes,
                                                   " to ", kMaxKeyBytes, " bytes, this one has ",
                                                   key.size()));
  }
  const bool printable = std::all_of(key.begin(), key.end(), [](char c) {
    return static_cast<unsigned char>(c) > 0x20 && static_cast<unsigned char>(c) < 0x7f;
  });
  if (!printable) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": an API key must be printable ASCII without spaces"));
  }
  return absl::OkStatus();
}

absl::Status CheckTenant(std::string_view tenant, const std::string& where) {
  const bool ok = !tenant.empty() && tenant.size() <= kMaxTenantBytes &&
                  std::all_of(tenant.begin(), tenant.end(), [](char c) {
                    return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' ||
                           c == '_' || c == '-';
                  });
  if (!ok) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": a tenant name must be 1 to ",
                                                   kMaxTenantBytes, " bytes of [A-Za-z0-9._-]"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ApiKeySet> ApiKeySet::FromEntries(const std::vector<ApiKeyEntry>& entries) {
  ApiKeySet set;
  for (size_t i = 0; i < entries.size(); ++i) {
    const std::string where = absl::StrCat("API key ", i + 1);
    if (absl::Status s = CheckKey(entries[i].key, where); !s.ok()) return s;
    if (absl::Status s = CheckTenant(entries[i].tenant, where); !s.ok()) return s;
    Key key{Digest(entries[i].key), entries[i].tenant};
    for (const Key& other : set.keys_) {
      if (other.digest == key.digest) {
        return absl::InvalidArgumentError(absl::StrCat(where, " is given twice"));
      }
    }
    set.keys_.push_back(std::move(key));
  }
  return set;
}

absl::StatusOr<ApiKeySet> ApiKeySet::Load(std::string_view flag_keys, const std::string& file) {
  std::vector<ApiKeyEntry> entries;
  int n = 0;
  for (absl::string_view key : absl::StrSplit(Absl(flag_keys), ',', absl::SkipWhitespace())) {
    entries.push_back({std::string(absl::StripAsciiWhitespace(key)), absl::StrCat("key", ++n)});
  }
  if (!file.empty()) {
    std::ifstream in(file);
    if (!in) return absl::NotFoundError(absl::StrCat("cannot read --api-key-file '", file, "'"));
    std::string line;
    int line_number = 0;
    while (std::getline(in, line)) {
      ++line_number;
      absl::string_view text = absl::StripAsciiWhitespace(line);
      if (text.empty() || text.front() == '#') continue;
      std::vector<absl::string_view> parts =
          absl::StrSplit(text, absl::ByAnyChar(" \t"), absl::SkipEmpty());
      if (parts.size() > 2) {
        return absl::InvalidArgumentError(absl::StrCat("--api-key-file '", file, "' line ",
                                                       line_number, ": expected KEY [TENANT]"));
      }
      entries.push_back({std::string(parts[0]), parts.size() == 2
                                                    ? std::string(parts[1])
                                                    : absl::StrCat("file-line", line_number)});
    }
  }
  return FromEntries(entries);
}

absl::StatusOr<std::string> ApiKeySet::Authenticate(std::string_view authorization) const {
  auto refuse = [](const char* why) {
    return absl::UnauthenticatedError(
        absl::StrCat(why, ": send the header `authorization: Bearer <API key>`"));
  };
  if (authorization.empty()) return refuse("no API key");
  if (authorization.size() > kMaxAuthorizationBytes) return refuse("the API key is too long");
  const absl::string_view value = Absl(authorization);
  constexpr absl::string_view kScheme = "bearer ";
  if (value.size() <= kScheme.size() ||
      !absl::EqualsIgnoreCase(value.substr(0, kScheme.size()), kScheme)) {
    return refuse("the authorization header is not a bearer token");
  }
  const absl::string_view stripped = absl::StripAsciiWhitespace(value.substr(kScheme.size()));
  const std::string_view presented(stripped.data(), stripped.size());
  const std::array<unsigned char, 32> digest = Digest(presented);
  const std::string_view d(reinterpret_cast<const char*>(digest.data()), digest.size());
  const Key* match = nullptr;
  for (const Key& key : keys_) {  // every key, no early exit
    const bool equal = ConstantTimeEquals(
        d, std::string_view(reinterpret_cast<const char*>(key.digest.data()), key.digest.size()));
    if (equal) match = &key;
  }
  if (match == nullptr) return refuse("the API key is not valid");
  return match->tenant;
}

}  // namespace hkv
