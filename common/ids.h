#pragma once
// Plain integer ids shared by every module. Never pointers.

#include <cstdint>

namespace hkv {

using RequestId = int64_t;  // Engine-wide unique id of one request (and its sequence).
using BlockId = int32_t;    // Index of one head-block in the KV pool.
using TokenId = int32_t;    // Vocabulary index.

}  // namespace hkv
