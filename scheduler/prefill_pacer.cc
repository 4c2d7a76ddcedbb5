#include "scheduler/prefill_pacer.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace hkv {
namespace {

// Feature scales of the fit: theta is seconds per 1024 tokens and per 1e8 query-key pairs, both
// of order 0.01-1 on today's GPUs, so the unit prior below suits either.
constexpr double kTokenScale = 1024.0;
constexpr double kPairScale = 1e8;
// Forgetting factor: the last ~20 prefill steps carry the fit.
constexpr double kForget = 0.95;
// Weight of the newest decode-only step in its moving average.
constexpr double kDecodeAlpha = 0.2;

}  // namespace

PrefillPacer::PrefillPacer(const PrefillPacingOptions& options) : options_(options) {}

bool PrefillPacer::enabled() const {
  return options_.max_step > absl::ZeroDuration() || options_.max_prefill_share > 0.0;
}

bool PrefillPacer::PrefillAllowed() const {
  if (options_.max_prefill_share <= 0.0 || total_seconds_ <= 0.0) return true;
  return prefill_seconds_ < options_.max_prefill_share * total_seconds_;
}

double PrefillPacer::per_token_seconds() const { return theta_[0] / kTokenScale; }
double PrefillPacer::per_pair_seconds() const { return theta_[1] / kPairScale; }

double PrefillPacer::PrefillSeconds(const StepWork& w) const {
  return std::max(0.0, theta_[0]) * (static_cast<double>(w.prefill_tokens) / kTokenScale) +
         std::max(0.0, theta_[1]) * (w.pairs / kPairScale);
}

int32_t PrefillPacer::ChunkLimit(int64_t start, const StepWork& planned, int32_t max_tokens) const {
  if (options_.max_step <= absl::ZeroDuration() || fitted_ == 0) return max_tokens;
  const double a = std::max(0.0, theta_[0]) / kTokenScale;  // seconds per token
  const double b = std::max(0.0, theta_[1]) / kPairScale;   // seconds per pair
  const int32_t floor = std::min(options_.min_chunk, max_tokens);
  const double budget =
      absl::ToDoubleSeconds(options_.max_step) - decode_step_ - PrefillSeconds(planned);
  if (budget <= 0.0) return floor;
  // Largest c with a c + b c (start + c / 2) <= budget.
  const double lin = a + b * static_cast<double>(start);
  double c;
  if (b > 0.0) {
    c = (-lin + std::sqrt(lin * lin + 2.0 * b * budget)) / b;
  } else if (lin > 0.0) {
    c = budget / lin;
  } else {
    return max_tokens;
  }
  if (!(c < static_cast<double>(max_tokens))) return max_tokens;  // also catches NaN
  return std::max(floor, static_cast<int32_t>(c));
}

void PrefillPacer::Fit(double tokens, double pairs, double seconds) {
  const double x[2] = {tokens / kTokenScale, pairs / kPairScale};
  const double px[2] = {p_[0][0] * x[0] + p_[0][1] * x[1], p_[1][0] * x[0] + p_[1][1] * x[1]};
  const double denom = kForget + x[0] * px[0] + x[1] * px[1];
  const double k[2] = {px[0] / denom, px[1] / denom};
  const double err = seconds - (theta_[0] * x[0] + theta_[1] * x[1]);
  theta_[0] += k[0] * err;
  theta_[1] += k[1] * err;
  // P = (P - k (P x)^T) / lambda; P stays symmetric.
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 2; ++j) p_[i][j] = (p_[i][j] - k[i] * px[j]) / kForget;
  }
  // Steps that all look alike (short prompts from position 0) leave one direction unexcited,
  // where forgetting would grow P without bound: cap it at the prior.
  const double trace = p_[0][0] + p_[1][1];
  if (trace > 2e4) {
    for (auto& row : p_) {
      for (double& v : row) v *= 2e4 / trace;
    }
  }
  ++fitted_;
}

void PrefillPacer::Observe(const StepWork& work, absl::Duration took) {
  if (!enabled() || work.empty()) return;
  const double seconds = std::max(0.0, absl::ToDoubleSeconds(took));
  if (work.prefill_tokens == 0) {
    decode_step_ =
        decode_step_ == 0.0 ? seconds : (1 - kDecodeAlpha) * decode_step_ + kDecodeAlpha * seconds;
  }
  const double extra = work.prefill_tokens == 0
                           ? 0.0
                           : std::max(0.0, seconds - (work.decodes > 0 ? decode_step_ : 0.0));
  if (work.prefill_tokens > 0) Fit(static_cast<double>(work.prefill_tokens), work.pairs, extra);
  if (work.decodes > 0) {  // The share counts the time of steps in which streams decode.
    const double keep = std::exp(-seconds / absl::ToDoubleSeconds(options_.window));
    prefill_seconds_ = keep * prefill_seconds_ + extra;
    total_seconds_ = keep * total_seconds_ + seconds;
  }
}

}  // namespace hkv
