#include "tokenizer/chat_template.h"

#include <fstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace hkv {
namespace {

TEST(ChatTemplateTest, Llama3Format) {
  ChatTemplate t(ChatFormat::kLlama3);
  auto text = t.Apply({{"system", "Be brief."}, {"user", "Hi"}}, true);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text,
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

TEST(ChatTemplateTest, MistralFormatAndAlternation) {
  ChatTemplate t(ChatFormat::kMistralInstruct);
  auto text = t.Apply({{"system", "S"}, {"user", "A"}, {"assistant", "B"}, {"user", "C"}}, true);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, "<s>[INST] S\n\nA [/INST]B</s>[INST] C [/INST]");
  EXPECT_EQ(t.Apply({{"assistant", "x"}}, true).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(t.Apply({{"wizard", "x"}}, true).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ChatTemplateTest, UnknownRolesAreEchoedBriefly) {
  ChatTemplate t(ChatFormat::kLlama3);
  const absl::Status s = t.Apply({{std::string(20000, 'r'), "x"}}, true).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_LT(s.message().size(), 200u) << s.message();
  EXPECT_THAT(std::string(s.message()), ::testing::HasSubstr("(20000 bytes)"));
}

TEST(ChatTemplateTest, DetectsSupportedTemplatesAndRejectsOthers) {
  EXPECT_EQ(*DetectChatFormat("{{ '<|start_header_id|>' + role }} ... <|eot_id|>"),
            ChatFormat::kLlama3);
  EXPECT_EQ(*DetectChatFormat("{{ '[INST] ' + content + ' [/INST]' }}"),
            ChatFormat::kMistralInstruct);
  auto other = DetectChatFormat("{% for m in messages %}<|im_start|>{{m}}{% endfor %}");
  EXPECT_EQ(other.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(other.status().message()), ::testing::HasSubstr("Llama-3"));
}

TEST(ChatTemplateTest, LoadsFromTokenizerConfig) {
  const std::string dir = ::testing::TempDir();
  std::ofstream(dir + "/tokenizer_config.json")
      << R"({"chat_template": "<|start_header_id|>{{x}}<|eot_id|>"})";
  auto t = LoadChatTemplate(dir);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ((*t)->format(), ChatFormat::kLlama3);
  EXPECT_EQ(LoadChatTemplate(dir + "/nope").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace hkv
