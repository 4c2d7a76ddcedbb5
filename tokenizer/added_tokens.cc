#include "tokenizer/added_tokens.h"

#include "common/status_macros.h"

namespace hkv {
namespace {

uint64_t Edge(int32_t node, unsigned char byte) {
  return (static_cast<uint64_t>(node) << 8) | byte;
}

}  // namespace

AddedTokens::AddedTokens(std::vector<std::pair<std::string, TokenId>> added)
    : added_(std::move(added)), first_(1, -1) {
  for (size_t i = 0; i < added_.size(); ++i) {
    const std::string& text = added_[i].first;
    if (text.empty()) continue;
    int32_t node = 0;
    for (unsigned char c : text) {
      auto [it, inserted] = edges_.try_emplace(Edge(node, c), static_cast<int32_t>(first_.size()));
      if (inserted) first_.push_back(-1);
      node = it->second;
    }
    if (first_[node] < 0) first_[node] = static_cast<int32_t>(i);  // Duplicates: the first wins.
  }
}

int32_t AddedTokens::FirstAt(std::string_view text, size_t at) const {
  int32_t best = -1;
  int32_t node = 0;
  for (size_t i = at; i < text.size(); ++i) {
    auto it = edges_.find(Edge(node, static_cast<unsigned char>(text[i])));
    if (it == edges_.end()) break;
    node = it->second;
    if (first_[node] >= 0 && (best < 0 || first_[node] < best)) best = first_[node];
  }
  return best;
}

absl::Status AddedTokens::Split(std::string_view text, EncodeChecker* checker,
                                std::vector<TokenId>* out,
                                absl::FunctionRef<absl::Status(std::string_view)> encode) const {
  size_t start = 0;
  if (!edges_.empty()) {
    for (size_t i = 0; i < text.size();) {
      HKV_RETURN_IF_ERROR(checker->Tick(1));
      const int32_t hit = FirstAt(text, i);
      if (hit < 0) {
        ++i;
        continue;
      }
      if (i > start) HKV_RETURN_IF_ERROR(encode(text.substr(start, i - start)));
      out->push_back(added_[hit].second);
      i += added_[hit].first.size();
      start = i;
    }
  }
  if (start < text.size()) HKV_RETURN_IF_ERROR(encode(text.substr(start)));
  return absl::OkStatus();
}

}  // namespace hkv
