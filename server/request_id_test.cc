#include "server/request_id.h"

#include <set>
#include <string>
#include <string_view>

#include "absl/strings/match.h"
#include "gtest/gtest.h"

namespace hkv {
namespace {

TEST(RequestIdTest, ServerIdsAreReservedHexOf128Bits) {
  std::set<std::string> seen;
  for (int i = 0; i < 50; ++i) {
    auto id = NewServerRequestId();
    ASSERT_TRUE(id.ok()) << id.status();
    ASSERT_TRUE(absl::StartsWith(*id, kServerRequestIdPrefix)) << *id;
    const std::string hex = id->substr(std::string_view(kServerRequestIdPrefix).size());
    EXPECT_EQ(hex.size(), 32u) << *id;
    EXPECT_EQ(hex.find_first_not_of("0123456789abcdef"), std::string::npos) << *id;
    EXPECT_TRUE(ValidateRequestIdSyntax(*id).ok());
    EXPECT_FALSE(ValidateClientRequestId(*id).ok());  // A client cannot name one.
    seen.insert(*id);
  }
  EXPECT_EQ(seen.size(), 50u);
}

TEST(RequestIdTest, ClientIdsAreBoundedPrintableAndOutsideTheReservedNamespace) {
  EXPECT_TRUE(ValidateClientRequestId("req-7").ok());
  EXPECT_TRUE(ValidateClientRequestId(std::string(kMaxRequestIdBytes, 'a')).ok());
  EXPECT_TRUE(ValidateClientRequestId("HKV-upper-case-is-the-client's").ok());
  for (const std::string& bad :
       {std::string(), std::string(kMaxRequestIdBytes + 1, 'a'), std::string("a b"),
        std::string("tab\there"), std::string("nul\0x", 5), std::string("caf\xc3\xa9"),
        std::string("hkv-0123")}) {
    const absl::Status s = ValidateClientRequestId(bad);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_LT(s.message().size(), 300u) << bad;
  }
  EXPECT_TRUE(ValidateRequestIdSyntax("hkv-0123").ok());
  EXPECT_FALSE(ValidateRequestIdSyntax(std::string(20000, 'x')).ok());
}

}  // namespace
}  // namespace hkv
