#include "executor/dist_bootstrap.h"

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "common/status_macros.h"

namespace hkv {
namespace {

// ---------------------------------------------------------------------------------------------
// Layout resolution.

constexpr char kAddrFlag[] = "--dist_addr";
constexpr char kWorldFlag[] = "--world_size";
constexpr char kRankFlag[] = "--rank";
constexpr char kAddrEnv[] = "LWS_LEADER_ADDRESS";
constexpr char kWorldEnv[] = "LWS_GROUP_SIZE";
constexpr char kRankEnv[] = "LWS_WORKER_INDEX";

absl::Status CheckPort(int64_t port, absl::string_view source) {
  if (port < 1 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("port ", port, " (from ", source, ") is outside 1..65535"));
  }
  return absl::OkStatus();
}

// Splits HOST, HOST:PORT, [IPV6] or [IPV6]:PORT; a bare host with several ':' is an IPv6
// address without a port. `*port` is left alone when the text has none.
absl::Status ParseHostPort(const std::string& text, absl::string_view source, std::string* host,
                           int32_t* port) {
  absl::string_view rest;
  if (!text.empty() && text[0] == '[') {
    const size_t close = text.find(']');
    if (close == std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, " \"", text, "\": '[' without a matching ']'"));
    }
    *host = text.substr(1, close - 1);
    rest = absl::string_view(text).substr(close + 1);
    if (!rest.empty() && rest[0] != ':') {
      return absl::InvalidArgumentError(
          absl::StrCat(source, " \"", text, "\": expected ':PORT' after ']'"));
    }
  } else {
    const size_t colon = text.find(':');
    if (colon != std::string::npos && text.find(':', colon + 1) == std::string::npos) {
      *host = text.substr(0, colon);
      rest = absl::string_view(text).substr(colon);
    } else {
      *host = text;  // no ':' at all, or a bare IPv6 address.
    }
  }
  if (host->empty()) {
    return absl::InvalidArgumentError(absl::StrCat(source, " \"", text, "\": empty host"));
  }
  if (!rest.empty()) {
    rest.remove_prefix(1);  // the ':'
    int32_t p = 0;
    if (!absl::SimpleAtoi(rest, &p)) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, " \"", text, "\": port \"", rest, "\" is not a number"));
    }
    HKV_RETURN_IF_ERROR(CheckPort(p, source));
    *port = p;
  }
  return absl::OkStatus();
}

// The environment variable `name`, or "" when unset.
std::string Env(const std::function<const char*(const char*)>& getenv_fn, const char* name) {
  const char* v = getenv_fn ? getenv_fn(name) : nullptr;
  return v == nullptr ? std::string() : std::string(v);
}

absl::Status ParseEnvInt(const std::string& text, const char* name, int32_t* out) {
  if (!absl::SimpleAtoi(text, out)) {
    return absl::InvalidArgumentError(absl::StrCat(name, "=\"", text, "\" is not an integer"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<DistLayout> ResolveDistLayout(
    const std::string& dist_addr_flag, int32_t world_size_flag, int32_t rank_flag,
    const std::function<const char*(const char*)>& getenv_fn, int32_t default_port) {
  DistLayout layout;

  // World size.
  std::string world_source = "default";
  if (world_size_flag != 0 && world_size_flag != -1) {
    layout.world_size = world_size_flag;
    world_source = kWorldFlag;
  } else if (std::string env = Env(getenv_fn, kWorldEnv); !env.empty()) {
    HKV_RETURN_IF_ERROR(ParseEnvInt(env, kWorldEnv, &layout.world_size));
    world_source = kWorldEnv;
  }
  if (layout.world_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "world size must be >= 1, got ", layout.world_size, " (from ", world_source, ")"));
  }

  // Rank.
  std::string rank_source = "default";
  if (rank_flag != -1) {
    layout.rank = rank_flag;
    rank_source = kRankFlag;
  } else if (std::string env = Env(getenv_fn, kRankEnv); !env.empty()) {
    HKV_RETURN_IF_ERROR(ParseEnvInt(env, kRankEnv, &layout.rank));
    rank_source = kRankEnv;
  }
  if (layout.rank < 0 || layout.rank >= layout.world_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "rank ", layout.rank, " (from ", rank_source, ") is outside [0, ", layout.world_size,
        ") for world size ", layout.world_size, " (from ", world_source, ")"));
  }

  // Leader address.
  layout.port = default_port;
  std::string addr = dist_addr_flag;
  const char* addr_source = kAddrFlag;
  if (addr.empty()) {
    addr = Env(getenv_fn, kAddrEnv);
    addr_source = kAddrEnv;
  }
  if (!addr.empty()) {
    HKV_RETURN_IF_ERROR(ParseHostPort(addr, addr_source, &layout.leader_host, &layout.port));
    HKV_RETURN_IF_ERROR(
        CheckPort(layout.port, absl::StrCat("the default, as ", addr_source, " has no port")));
  } else if (layout.world_size > 1) {
    return absl::InvalidArgumentError(absl::StrCat("world size ", layout.world_size, " (from ",
                                                   world_source, ") needs rank 0's address: set ",
                                                   kAddrFlag, "=HOST[:PORT] or ", kAddrEnv));
  }
  return layout;
}

}  // namespace hkv
