#pragma once
// A last resort against a process that would hang on its way out: after a fatal fault (a GPU or
// a peer node lost), shutting down in order may block for ever in a driver call on a wedged
// device. ExitAfter() ends the process with `code` once `delay` has passed, whatever the other
// threads are doing. Thread-safe; the first call wins (later ones do nothing).

#include <string>

#include "absl/time/time.h"

namespace hkv {

void ExitAfter(absl::Duration delay, int code, const std::string& reason);

}  // namespace hkv
