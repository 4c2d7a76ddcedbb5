// tokenizer.json loading: a byte-level vocabulary built from llama.cpp's Llama-3 GGUF must pass
// the same vectors through the tokenizer.json path; a small SentencePiece-style tokenizer.json
// checks Metaspace, merges ranks, byte fallback and added tokens; bad files give clear errors.

#include "tokenizer/hf_tokenizer.h"

#include <fstream>

#include "common/paths.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tokenizer/bpe_tokenizers.h"
#include "tokenizer/gguf_vocab.h"

namespace hkv {
namespace {

using nlohmann::json;

TEST(HfTokenizerTest, ByteLevelTokenizerJsonMatchesTheGgufVectors) {
  auto g = LoadGgufVocab(SharedDataDir() + "/tokenizer_vectors/ggml-vocab-llama-bpe.gguf");
  ASSERT_TRUE(g.ok()) << g.status();
  json t;
  json vocab = json::object();
  for (size_t i = 0; i < g->tokens.size(); ++i) {
    if (g->token_types[i] == 3) continue;  // Control tokens go to added_tokens.
    vocab[g->tokens[i]] = i;
  }
  t["added_tokens"] = json::array();
  for (size_t i = 0; i < g->tokens.size(); ++i) {
    if (g->token_types[i] == 3) {
      t["added_tokens"].push_back({{"id", i}, {"content", g->tokens[i]}, {"special", true}});
    }
  }
  t["model"] = {{"type", "BPE"}, {"vocab", vocab}, {"merges", g->merges}, {"ignore_merges", true}};
  t["pre_tokenizer"] = {
      {"type", "Sequence"},
      {"pretokenizers",
       json::array({{{"type", "Split"}, {"pattern", {{"Regex", *PreTokenizerPattern("llama3")}}}},
                    {{"type", "ByteLevel"}}})}};
  t["post_processor"] = {{"type", "TemplateProcessing"}};
  auto tok = ParseHfTokenizer(t.dump(), R"({"bos_token": "<|begin_of_text|>"})",
                              R"({"bos_token_id": 128000, "eos_token_id": [128001, 128009]})");
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->bos_id(), 128000);
  EXPECT_THAT((*tok)->eos_ids(), ::testing::ElementsAre(128001, 128009));
  EXPECT_THAT((*tok)->Encode(" Hello, world!", false), ::testing::ElementsAre(22691, 11, 1917, 0));
  EXPECT_THAT((*tok)->Encode(" this is 🦙.cpp", true),
              ::testing::ElementsAre(128000, 420, 374, 11410, 99, 247, 13, 11055));
  // Added tokens in the text (chat prompts) become their ids; control tokens decode to "".
  EXPECT_THAT((*tok)->Encode("<|start_header_id|>user<|end_header_id|>", false),
              ::testing::ElementsAre(128006, 882, 128007));
  EXPECT_EQ((*tok)->Decode({128000, 9906, 1917, 128009}), "Hello world");
}

TEST(HfTokenizerTest, SentencePieceStyleWithByteFallback) {
  const char* kSpm = R"({
    "added_tokens": [{"id": 0, "content": "<unk>", "special": true},
                     {"id": 1, "content": "<s>", "special": true},
                     {"id": 2, "content": "</s>", "special": true}],
    "normalizer": {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "\u2581"},
        {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]},
    "pre_tokenizer": null,
    "model": {"type": "BPE", "byte_fallback": true,
      "vocab": {"<unk>": 0, "<s>": 1, "</s>": 2, "<0x0A>": 3, "<0x21>": 4,
                "\u2581": 5, "h": 6, "i": 7, "hi": 8, "\u2581hi": 9, "t": 10, "\u2581t": 11},
      "merges": ["h i", "\u2581 hi", "\u2581 t"]}})";
  auto tok = ParseHfTokenizer(kSpm, R"({"add_bos_token": true, "bos_token": "<s>",
                                        "eos_token": "</s>"})", "");
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_THAT((*tok)->Encode("hi hi!\n", true), ::testing::ElementsAre(1, 9, 9, 4, 3));
  EXPECT_EQ((*tok)->Decode((*tok)->Encode("hi hi!\n", true)), "hi hi!\n");
  EXPECT_THAT((*tok)->eos_ids(), ::testing::ElementsAre(2));
}

TEST(HfTokenizerTest, RejectsMalformedOrUnsupportedFiles) {
  EXPECT_EQ(ParseHfTokenizer("{", "", "").status().code(), absl::StatusCode::kInvalidArgument);
  auto unigram = ParseHfTokenizer(R"({"model": {"type": "Unigram", "vocab": []}})", "", "");
  EXPECT_THAT(std::string(unigram.status().message()), ::testing::HasSubstr("Unigram"));
  EXPECT_EQ(LoadHfTokenizer("/nonexistent").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace hkv
