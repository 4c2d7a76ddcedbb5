#include "server/request_id.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/quote.h"
#include "common/random.h"

namespace hkv {

absl::StatusOr<std::string> NewServerRequestId() {
  absl::StatusOr<std::string> hex = RandomHex(16);
  if (!hex.ok()) return hex.status();
  return absl::StrCat(kServerRequestIdPrefix, *hex);
}

absl::Status ValidateRequestIdSyntax(std::string_view id) {
  if (id.empty()) return absl::InvalidArgumentError("request_id is empty");
  if (id.size() > kMaxRequestIdBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "request_id ", QuoteForError(id), " is too long: at most ", kMaxRequestIdBytes, " bytes"));
  }
  const bool visible = std::all_of(id.begin(), id.end(), [](char c) {
    return static_cast<unsigned char>(c) > 0x20 && static_cast<unsigned char>(c) < 0x7f;
  });
  if (!visible) {
    return absl::InvalidArgumentError(
        absl::StrCat("request_id ", QuoteForError(id),
                     " has a byte that is not printable ASCII (spaces excluded)"));
  }
  return absl::OkStatus();
}

absl::Status ValidateClientRequestId(std::string_view id) {
  absl::Status syntax = ValidateRequestIdSyntax(id);
  if (!syntax.ok()) return syntax;
  if (id.starts_with(kServerRequestIdPrefix)) {
    return absl::InvalidArgumentError(
        absl::StrCat("request_id ", QuoteForError(id), " starts with \"", kServerRequestIdPrefix,
                     "\", which is reserved for ids the server makes: choose another name or "
                     "leave request_id empty"));
  }
  return absl::OkStatus();
}

}  // namespace hkv
