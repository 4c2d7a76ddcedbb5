#pragma once
// Engine::Active, the engine thread's state of one live request (one sample of it), and the key
// that finds a live request by its client's id. Shared by the engine's source files only;
// Active is engine-thread only.

#include <cstdint>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "server/engine.h"
#include "server/output_processor.h"
#include "server/request_stream.h"

namespace hkv {

struct Engine::Active {
  std::shared_ptr<RequestStream> stream;  // Shared by the request's samples (n > 1).
  int32_t index = 0;                      // Which sample; its request's id is id - index.
  int32_t num_samples = 1;
  std::unique_ptr<OutputProcessor> output;
  int32_t prompt_tokens = 0;
  int32_t prefilled = 0;  // Prompt tokens counted in prompt_tokens_total.
  int32_t generated = 0;
  uint64_t seed = 0;  // The sampling seed used, reported in the usage.
  absl::Time arrival;
  absl::Time last_token;
  bool finished = false;
};

// The key of a live request in by_client_id_: ids are scoped to their tenant. Tenant names
// never hold '\n' (server/auth/api_keys.h), so distinct pairs give distinct keys.
inline std::string ClientKey(const std::string& tenant, const std::string& request_id) {
  return tenant.empty() ? request_id : absl::StrCat(tenant, "\n", request_id);
}

}  // namespace hkv
