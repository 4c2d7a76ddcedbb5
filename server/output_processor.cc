#include "server/output_processor.h"

#include <algorithm>
#include <utility>

namespace hkv {

OutputProcessor::OutputProcessor(const Tokenizer* tokenizer, TokenId prev,
                                 const std::vector<std::string>& stop)
    : tokenizer_(tokenizer),
      prev_(prev),
      stops_(tokenizer != nullptr ? stop : std::vector<std::string>{}) {}

OutputProcessor::Delta OutputProcessor::Push(TokenId id, bool last) {
  Delta d;
  if (tokenizer_ == nullptr) return d;  // A model without a tokenizer streams ids only.
  std::string fresh = utf8_.Push(tokenizer_->TokenBytes(prev_, id));
  prev_ = id;
  if (last) fresh += utf8_.Flush();
  if (stops_.empty()) {
    d.text = std::move(fresh);
    return d;
  }
  // Only the new bytes go through the automaton; held_ already has.
  const size_t from = held_.size();
  held_ += fresh;
  size_t stop_at = std::string::npos;  // Earliest start of a match, in held_.
  for (size_t i = from; i < held_.size(); ++i) {
    state_ = stops_.Next(state_, static_cast<uint8_t>(held_[i]));
    const size_t end = i + 1;
    if (const int32_t len = stops_.match(state_); len > 0) {
      stop_at = std::min(stop_at, end - len);
    }
    // A match starting earlier would have to extend the current partial match, which starts
    // at end - depth: once that is not before stop_at, nothing earlier can come.
    if (stop_at != std::string::npos && end - stops_.depth(state_) >= stop_at) break;
  }
  if (stop_at != std::string::npos) {
    d.stop_hit = true;
    d.text = held_.substr(0, stop_at);
    held_.clear();
    return d;
  }
  const size_t keep = last ? 0 : static_cast<size_t>(stops_.depth(state_));
  d.text = held_.substr(0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  return d;
}

}  // namespace hkv
