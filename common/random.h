#pragma once
// Unpredictable random values from the operating system's entropy source (getrandom(2), or
// /dev/urandom where the kernel lacks it), for what a client must not guess or share: request
// ids and the sampling seeds of unseeded requests. Not a PRNG: every call asks the kernel.
//
// Thread-safe.

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace hkv {

// Fills `size` bytes at `data` with random bytes. INTERNAL if the OS cannot provide them.
absl::Status FillRandomBytes(void* data, size_t size);

// Returns a uniformly random 64-bit value.
absl::StatusOr<uint64_t> RandomUint64();

// Returns `num_bytes` random bytes as 2 * num_bytes lowercase hex digits.
absl::StatusOr<std::string> RandomHex(size_t num_bytes);

}  // namespace hkv
