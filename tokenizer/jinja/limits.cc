#include "tokenizer/jinja/limits.h"

#include "absl/strings/str_cat.h"

namespace hkv::jinja {

absl::Status RenderBudget::Step(int64_t n) {
  steps_ += n;
  if (steps_ > limits_.max_steps) {
    return absl::ResourceExhaustedError(
        absl::StrCat("chat template ran past ", limits_.max_steps, " steps"));
  }
  return absl::OkStatus();
}

absl::Status RenderBudget::CheckSize(int64_t n) const {
  if (n > limits_.max_output_bytes) {
    return absl::ResourceExhaustedError(
        absl::StrCat("chat template built a string past ", limits_.max_output_bytes, " bytes"));
  }
  return absl::OkStatus();
}

absl::Status RenderBudget::Bytes(int64_t n) {
  if (absl::Status s = CheckSize(n); !s.ok()) return s;
  work_bytes_ += n;
  if (work_bytes_ > limits_.max_work_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat("chat template built more than ",
                                                     limits_.max_work_bytes, " bytes of strings"));
  }
  return absl::OkStatus();
}

absl::Status RenderBudget::Enter() {
  if (++depth_ > limits_.max_depth) {
    --depth_;
    return absl::ResourceExhaustedError(
        absl::StrCat("chat template nested macro calls or loops past depth ", limits_.max_depth));
  }
  return absl::OkStatus();
}

}  // namespace hkv::jinja
