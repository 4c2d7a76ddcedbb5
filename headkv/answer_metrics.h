#pragma once
// Answer-correctness metrics used to accept or reject a HeadKV scoring probe: QA-F1 (LongBench /
// SQuAD `qa_f1_score`), ROUGE-1 recall (Retrieval-head acceptance) and exact match, all over the
// same SQuAD normalisation.
//
// NOTE: Wu et al. score ROUGE-1 with rouge_score's tokenizer (non-alphanumerics split words,
// articles kept); the issue asks for the SQuAD normalisation here, so the two can differ on
// answers containing a/an/the or joined punctuation.
//
// Pure functions; thread-compatible.

#include <string>
#include <string_view>
#include <vector>

namespace hkv {

// Lowercases, drops ASCII punctuation, drops the articles a/an/the, collapses whitespace.
std::string NormalizeAnswer(std::string_view text);

// Splits NormalizeAnswer(text) into words.
std::vector<std::string> AnswerTokens(std::string_view text);

// Token-level F1 over the bag of normalised words; 1 when both are empty, 0 when one is.
double QaF1(std::string_view prediction, std::string_view reference);

// Clipped unigram overlap / reference unigrams; 1 when both are empty, 0 when only one is.
double Rouge1Recall(std::string_view prediction, std::string_view reference);

// True when both normalise to the same string.
bool ExactMatch(std::string_view prediction, std::string_view reference);

}  // namespace hkv
