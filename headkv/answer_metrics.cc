#include "headkv/answer_metrics.h"

#include <algorithm>
#include <cctype>
#include <map>

#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

namespace hkv {
namespace {

bool IsArticle(absl::string_view word) { return word == "a" || word == "an" || word == "the"; }

// The clipped count of words shared by both bags (Python's Counter & Counter).
int SharedWords(const std::vector<std::string>& a, const std::vector<std::string>& b) {
  std::map<std::string, int> counts;
  for (const std::string& w : b) ++counts[w];
  int shared = 0;
  for (const std::string& w : a) {
    auto it = counts.find(w);
    if (it != counts.end() && it->second > 0) {
      --it->second;
      ++shared;
    }
  }
  return shared;
}

}  // namespace

std::string NormalizeAnswer(std::string_view text) {
  // NOTE: SQuAD's order is lower -> remove punctuation -> remove articles -> fix whitespace, so
  // "the-end" becomes "theend" (punctuation joins words) rather than "end".
  std::string stripped;
  stripped.reserve(text.size());
  for (char c : text) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (std::ispunct(u)) continue;
    stripped.push_back(static_cast<char>(std::tolower(u)));
  }
  std::vector<std::string> words;
  for (absl::string_view w :
       absl::StrSplit(stripped, absl::ByAnyChar(" \t\n\r\f\v"), absl::SkipEmpty())) {
    if (!IsArticle(w)) words.emplace_back(w.data(), w.size());
  }
  return absl::StrJoin(words, " ");
}

std::vector<std::string> AnswerTokens(std::string_view text) {
  std::vector<std::string> words;
  for (absl::string_view w : absl::StrSplit(NormalizeAnswer(text), ' ', absl::SkipEmpty())) {
    words.emplace_back(w.data(), w.size());
  }
  return words;
}

double QaF1(std::string_view prediction, std::string_view reference) {
  const std::vector<std::string> pred = AnswerTokens(prediction);
  const std::vector<std::string> ref = AnswerTokens(reference);
  if (pred.empty() && ref.empty()) return 1.0;
  const int shared = SharedWords(pred, ref);
  if (shared == 0) return 0.0;
  const double precision = static_cast<double>(shared) / pred.size();
  const double recall = static_cast<double>(shared) / ref.size();
  return 2 * precision * recall / (precision + recall);
}

double Rouge1Recall(std::string_view prediction, std::string_view reference) {
  const std::vector<std::string> pred = AnswerTokens(prediction);
  const std::vector<std::string> ref = AnswerTokens(reference);
  if (ref.empty()) return pred.empty() ? 1.0 : 0.0;
  return static_cast<double>(SharedWords(pred, ref)) / ref.size();
}

bool ExactMatch(std::string_view prediction, std::string_view reference) {
  return NormalizeAnswer(prediction) == NormalizeAnswer(reference);
}

}  // namespace hkv
