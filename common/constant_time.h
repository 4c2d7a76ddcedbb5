#pragma once
// Comparison of secrets (API keys, the multi-node token) whose time does not depend on where
// the inputs first differ, so that a client cannot find a secret byte by byte by timing
// refusals. Thread-safe: a pure function.

#include <string_view>

namespace hkv {

// True when `a` and `b` are equal. Runs in time that depends only on the two lengths.
bool ConstantTimeEquals(std::string_view a, std::string_view b);

}  // namespace hkv
