// Real models' chat templates (tests/data/chat_templates/<family>/tokenizer_config.json, copied
// from /work/shared/chat_templates) rendered through LoadChatTemplate, byte for byte against
// what transformers' settings of Python's Jinja2 render (tests/data/chat_templates/goldens.json,
// made by tests/make_chat_goldens.py), and the loader's sources and forms.
#include "tokenizer/chat_template.h"

#include <stdlib.h>
#include <unistd.h>

#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace hkv {
namespace {

constexpr char kTemplates[] = "tests/data/chat_templates";
constexpr const char* kFamilies[] = {"gemma2",       "llama3", "llama3_1", "mistral_nemo",
                                     "mistral_v0_2", "phi3",   "qwen2_5",  "zephyr"};

TEST(ChatTemplateGoldenTest, EveryFamilyRendersAsTransformersDoes) {
  std::ifstream in(std::string(kTemplates) + "/goldens.json");
  ASSERT_TRUE(in) << "run from the source root";
  const nlohmann::json goldens = nlohmann::json::parse(in);
  const nlohmann::json& conversations = goldens["conversations"];
  const nlohmann::json& renders = goldens["renders"];
  int checked = 0, refusals = 0;
  for (const char* family : kFamilies) {
    auto chat = LoadChatTemplate(std::string(kTemplates) + "/" + family);
    ASSERT_TRUE(chat.ok()) << family << ": " << chat.status();
    for (auto conv = conversations.begin(); conv != conversations.end(); ++conv) {
      std::vector<ChatMessage> messages;
      for (const auto& m : conv.value()) {
        messages.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
      }
      for (bool gen : {false, true}) {
        const std::string key = absl::StrCat(family, "/", conv.key(), "/", gen ? "gen" : "nogen");
        SCOPED_TRACE(key);
        ASSERT_TRUE(renders.contains(key));
        const nlohmann::json& want = renders[key];
        auto got = (*chat)->Apply(messages, gen);
        if (want.contains("text")) {
          ASSERT_TRUE(got.ok()) << got.status();
          EXPECT_EQ(*got, want["text"].get<std::string>());
        } else {
          // The template's own refusal: INVALID_ARGUMENT with its message, word for word.
          EXPECT_EQ(got.status(), absl::InvalidArgumentError(want["error"].get<std::string>()));
          ++refusals;
        }
        ++checked;
      }
    }
  }
  EXPECT_EQ(checked, 8 * static_cast<int>(conversations.size()) * 2);
  EXPECT_GE(refusals, 10);  // Gemma-2's system role, the Mistral templates' alternation.
}

TEST(ChatTemplateTest, QwenTemplateLeavesANullBosUndefined) {
  auto chat = LoadChatTemplate(std::string(kTemplates) + "/qwen2_5");
  ASSERT_TRUE(chat.ok()) << chat.status();
  EXPECT_FALSE((*chat)->tokens().bos_token.has_value());
  EXPECT_EQ((*chat)->tokens().eos_token, "<|im_end|>");
  auto text = (*chat)->Apply({{"user", "Hi"}}, true);
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(*text,
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
            "assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
}

class ChatTemplateDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/chat_template_test_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    for (const char* f : {"tokenizer_config.json", "chat_template.jinja", "override.jinja"}) {
      unlink((dir_ + "/" + f).c_str());
    }
    rmdir(dir_.c_str());
  }
  void Write(const std::string& name, const std::string& text) {
    std::ofstream(dir_ + "/" + name) << text;
  }
  std::string dir_;
};

TEST_F(ChatTemplateDirTest, NamedTemplateListAndAddedTokenObjects) {
  Write("tokenizer_config.json", R"({
    "bos_token": {"__type": "AddedToken", "content": "<B>", "lstrip": false},
    "eos_token": "<E>",
    "chat_template": [{"name": "tool_use", "template": "tools"},
                      {"name": "default", "template": "{{ bos_token }}{% for m in messages %}{{ m.role }}:{{ m.content }}{{ eos_token }}{% endfor %}"}]
  })");
  auto chat = LoadChatTemplate(dir_);
  ASSERT_TRUE(chat.ok()) << chat.status();
  EXPECT_EQ(*(*chat)->Apply({{"user", "x"}, {"assistant", "y"}}, false),
            "<B>user:x<E>assistant:y<E>");
}

TEST_F(ChatTemplateDirTest, JinjaFileWinsAndAnOverrideWinsOverBoth) {
  Write("tokenizer_config.json", R"({"eos_token": "</s>", "chat_template": "config"})");
  EXPECT_EQ(*(*LoadChatTemplate(dir_))->Apply({{"user", "x"}}, true), "config");
  Write("chat_template.jinja", "file{{ eos_token }}\n");  // One trailing newline is dropped.
  auto chat = LoadChatTemplate(dir_);
  ASSERT_TRUE(chat.ok());
  EXPECT_EQ((*chat)->origin(), dir_ + "/chat_template.jinja");
  EXPECT_EQ(*(*chat)->Apply({{"user", "x"}}, true), "file</s>");
  Write("override.jinja", "{% if add_generation_prompt %}gen{% else %}nogen{% endif %}");
  chat = LoadChatTemplate(dir_, dir_ + "/override.jinja");
  ASSERT_TRUE(chat.ok());
  EXPECT_EQ(*(*chat)->Apply({{"user", "x"}}, true), "gen");
  EXPECT_EQ(*(*chat)->Apply({{"user", "x"}}, false), "nogen");
}

TEST_F(ChatTemplateDirTest, MissingAndBrokenTemplates) {
  EXPECT_EQ(LoadChatTemplate(dir_).status().code(), absl::StatusCode::kNotFound);
  Write("tokenizer_config.json", R"({"eos_token": "</s>"})");
  EXPECT_EQ(LoadChatTemplate(dir_).status().code(), absl::StatusCode::kNotFound);
  Write("tokenizer_config.json", R"({"chat_template": [{"name": "rag", "template": "x"}]})");
  EXPECT_EQ(LoadChatTemplate(dir_).status().code(), absl::StatusCode::kInvalidArgument);
  Write("tokenizer_config.json", R"({"chat_template": "{% for m in messages %}"})");
  auto broken = LoadChatTemplate(dir_);
  EXPECT_EQ(broken.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(broken.status().message()), ::testing::HasSubstr("tokenizer_config"));
  EXPECT_EQ(LoadChatTemplate(dir_, dir_ + "/no_such.jinja").status().code(),
            absl::StatusCode::kInvalidArgument);
  Write("tokenizer_config.json", "not json");
  EXPECT_EQ(LoadChatTemplate(dir_).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ChatTemplateTest, RendersAreBounded) {
  auto chat = ChatTemplate::Create(
      "{% for m in messages %}{% for i in range(100000) %}{{ m.content }}{% endfor %}{% endfor %}",
      {}, "test");
  ASSERT_TRUE(chat.ok());
  auto out = (*chat)->Apply({{"user", std::string(1000, 'x')}}, true);
  EXPECT_EQ(out.status().code(), absl::StatusCode::kResourceExhausted) << out.status();
  EXPECT_EQ((*chat)->Apply({}, true).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace hkv
