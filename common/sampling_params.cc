#include "common/sampling_params.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace hkv {
namespace {

absl::Status CheckRange(const char* name, float v, float lo, float hi) {
  if (!std::isfinite(v) || v < lo || v > hi) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, " must be in [", lo, ", ", hi, "], got ", v));
  }
  return absl::OkStatus();
}

}  // namespace

StepSampling ToStepSampling(const SamplingParams& p) {
  StepSampling s;
  s.temperature = p.temperature;
  s.top_k = p.top_k;
  s.top_p = p.top_p;
  s.seed = p.seed;
  s.presence_penalty = p.presence_penalty;
  s.frequency_penalty = p.frequency_penalty;
  s.repetition_penalty = p.repetition_penalty;
  s.min_p = p.min_p;
  s.min_tokens = p.min_tokens;
  s.logprobs = p.logprobs;
  return s;
}

uint64_t SampleSeed(uint64_t seed, int32_t index) {
  if (index == 0) return seed;
  uint64_t x = seed ^ (static_cast<uint64_t>(index) * 0xD1B54A32D192ED03ULL);
  x = (x ^ (x >> 32)) * 0xD6E8FEB86659FD93ULL;
  x = (x ^ (x >> 32)) * 0xD6E8FEB86659FD93ULL;
  return x ^ (x >> 32);
}

absl::Status ValidateSamplingParams(const SamplingParams& p) {
  if (!std::isfinite(p.temperature) || p.temperature < 0.0f) {
    return absl::InvalidArgumentError(
        absl::StrCat("temperature must be a finite number >= 0, got ", p.temperature));
  }
  if (p.top_k < 0) {
    return absl::InvalidArgumentError(absl::StrCat("top_k must be >= 0 (0 = off), got ", p.top_k));
  }
  if (!std::isfinite(p.top_p) || p.top_p <= 0.0f || p.top_p > 1.0f) {
    return absl::InvalidArgumentError(absl::StrCat("top_p must be in (0, 1], got ", p.top_p));
  }
  if (p.max_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_tokens must be >= 1, got ", p.max_tokens));
  }
  HKV_RETURN_IF_ERROR(CheckRange("presence_penalty", p.presence_penalty, -2.0f, 2.0f));
  HKV_RETURN_IF_ERROR(CheckRange("frequency_penalty", p.frequency_penalty, -2.0f, 2.0f));
  if (!std::isfinite(p.repetition_penalty) || p.repetition_penalty <= 0.0f ||
      p.repetition_penalty > 2.0f) {
    return absl::InvalidArgumentError(
        absl::StrCat("repetition_penalty must be in (0, 2] (1 = off), got ", p.repetition_penalty));
  }
  HKV_RETURN_IF_ERROR(CheckRange("min_p", p.min_p, 0.0f, 1.0f));
  if (p.min_tokens < 0 || p.min_tokens > p.max_tokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "min_tokens must be in [0, max_tokens = ", p.max_tokens, "], got ", p.min_tokens));
  }
  if (p.logprobs < -1 || p.logprobs > kMaxTopLogprobs) {
    return absl::InvalidArgumentError(
        absl::StrCat("top logprobs must be in [0, ", kMaxTopLogprobs, "], got ", p.logprobs));
  }
  if (p.n < 1) return absl::InvalidArgumentError(absl::StrCat("n must be >= 1, got ", p.n));
  return absl::OkStatus();
}

}  // namespace hkv
