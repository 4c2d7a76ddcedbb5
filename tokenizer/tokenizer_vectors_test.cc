// llama.cpp's tokenizer test vectors (../shared/tokenizer_vectors): every input must encode to
// exactly the expected ids (no BOS, special tokens not parsed), for Llama-3 (byte-level BPE),
// Llama-2/Mistral (SentencePiece BPE) and Qwen2 vocabularies read from GGUF.

#include <fstream>
#include <map>
#include <sstream>

#include "common/paths.h"
#include "gtest/gtest.h"
#include "tokenizer/bpe_tokenizers.h"
#include "tokenizer/gguf_vocab.h"

namespace hkv {
namespace {

std::string Read(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// Inputs split on "\n__ggml_vocab_test__\n", one expected-id line per input (as llama.cpp's
// test-tokenizer-0 reads them).
std::vector<std::pair<std::string, std::vector<TokenId>>> ReadVectors(const std::string& base) {
  const std::string raw = Read(base + ".inp");
  const std::string sep = "\n__ggml_vocab_test__\n";
  std::vector<std::string> inputs;
  for (size_t pos = 0; pos < raw.size();) {
    const size_t next = raw.find(sep, pos);
    if (next == std::string::npos) {
      inputs.push_back(raw.substr(pos));
      break;
    }
    inputs.push_back(raw.substr(pos, next - pos));
    pos = next + sep.size();
  }
  std::istringstream out(Read(base + ".out"));
  std::vector<std::pair<std::string, std::vector<TokenId>>> tests;
  std::string line;
  for (const std::string& input : inputs) {
    if (!std::getline(out, line)) break;
    std::istringstream ids(line);
    std::vector<TokenId> expected;
    for (TokenId id; ids >> id;) expected.push_back(id);
    tests.emplace_back(input, expected);
  }
  EXPECT_EQ(tests.size(), inputs.size()) << base;
  return tests;
}

class TokenizerVectorsTest : public ::testing::TestWithParam<const char*> {};

TEST_P(TokenizerVectorsTest, EncodesEveryVector) {
  const std::string base = SharedDataDir() + "/tokenizer_vectors/" + GetParam();
  auto vocab = LoadGgufVocab(base);
  ASSERT_TRUE(vocab.ok()) << vocab.status();
  auto tokenizer = MakeTokenizerFromGguf(*vocab);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  const auto tests = ReadVectors(base);
  ASSERT_GT(tests.size(), 20u);
  int failed = 0;
  for (const auto& [input, expected] : tests) {
    const std::vector<TokenId> got = (*tokenizer)->Encode(input, /*add_bos=*/false);
    if (got != expected) {
      ++failed;
      std::string g, e;
      for (TokenId t : got) g += " " + std::to_string(t);
      for (TokenId t : expected) e += " " + std::to_string(t);
      ADD_FAILURE() << "input '" << input << "'\n  got     " << g << "\n  expected" << e;
    }
    // Decoding gives the text back (SentencePiece drops the dummy prefix).
    EXPECT_EQ((*tokenizer)->Decode(got), input) << input;
  }
  EXPECT_EQ(failed, 0) << failed << " of " << tests.size() << " vectors differ";
}

INSTANTIATE_TEST_SUITE_P(Vocabs, TokenizerVectorsTest,
                         ::testing::Values("ggml-vocab-llama-bpe.gguf", "ggml-vocab-llama-spm.gguf",
                                           "ggml-vocab-qwen2.gguf"));

TEST(GgufVocabTest, RejectsNonGgufAndMissingFiles) {
  const std::string path = ::testing::TempDir() + "/not.gguf";
  std::ofstream(path) << "GGML this is not gguf";
  EXPECT_EQ(LoadGgufVocab(path).status().code(), absl::StatusCode::kInvalidArgument);
  std::ofstream(path) << "GGUF";
  EXPECT_EQ(LoadGgufVocab(path).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(LoadGgufVocab(path + ".missing").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace hkv
