#pragma once
// Chat formats: turns chat messages into the prompt text a model was tuned on. hkv does not run
// Jinja; it recognises the two templates it supports by their content in tokenizer_config.json:
//
//   kLlama3        <|begin_of_text|><|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>
//                  ... then <|start_header_id|>assistant<|end_header_id|>\n\n
//   kMistralInstruct  <s>[INST] {user} [/INST]{assistant}</s>[INST] ... (a system message is
//                  prepended to the first user message)
//
// Immutable; thread-safe.

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace hkv {

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant".
  std::string content;
};

enum class ChatFormat { kLlama3, kMistralInstruct };

class ChatTemplate {
 public:
  explicit ChatTemplate(ChatFormat format) : format_(format) {}
  ChatFormat format() const { return format_; }
  // The prompt text (BOS included as text, so encode it without adding BOS). INVALID_ARGUMENT
  // for an unknown role, or (Mistral) roles that do not alternate user/assistant.
  absl::StatusOr<std::string> Apply(const std::vector<ChatMessage>& messages,
                                    bool add_generation_prompt) const;

 private:
  ChatFormat format_;
};

// Recognises a Jinja chat template's text. INVALID_ARGUMENT naming the supported formats.
absl::StatusOr<ChatFormat> DetectChatFormat(const std::string& jinja_template);

// Reads `chat_template` from `model_dir`/tokenizer_config.json. NOT_FOUND when the model has
// none; INVALID_ARGUMENT when it is not one hkv supports.
absl::StatusOr<std::shared_ptr<const ChatTemplate>> LoadChatTemplate(const std::string& model_dir);

}  // namespace hkv
