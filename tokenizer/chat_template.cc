#include "tokenizer/chat_template.h"

#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/quote.h"
#include "nlohmann/json.hpp"

namespace hkv {
namespace {

absl::Status CheckRole(const ChatMessage& m) {
  if (m.role == "system" || m.role == "user" || m.role == "assistant") return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("chat role ", QuoteForError(m.role), " is not one of system, user, assistant"));
}

}  // namespace

absl::StatusOr<std::string> ChatTemplate::Apply(const std::vector<ChatMessage>& messages,
                                                bool add_generation_prompt) const {
  if (messages.empty()) return absl::InvalidArgumentError("chat has no messages");
  for (const ChatMessage& m : messages) {
    absl::Status s = CheckRole(m);
    if (!s.ok()) return s;
  }
  std::string out;
  if (format_ == ChatFormat::kLlama3) {
    out = "<|begin_of_text|>";
    for (const ChatMessage& m : messages) {
      absl::StrAppend(&out, "<|start_header_id|>", m.role, "<|end_header_id|>\n\n", m.content,
                      "<|eot_id|>");
    }
    if (add_generation_prompt) absl::StrAppend(&out, "<|start_header_id|>assistant<|end_header_id|>\n\n");
    return out;
  }
  // Mistral-Instruct: optional system message folded into the first user turn; then strictly
  // alternating user/assistant turns starting with user.
  size_t first = 0;
  std::string system;
  if (messages[0].role == "system") {
    system = messages[0].content + "\n\n";
    first = 1;
  }
  out = "<s>";
  for (size_t i = first; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    const bool user_turn = (i - first) % 2 == 0;
    if (m.role != (user_turn ? "user" : "assistant")) {
      return absl::InvalidArgumentError(
          "Mistral-Instruct chats must alternate user/assistant, starting with user");
    }
    if (user_turn) {
      absl::StrAppend(&out, "[INST] ", i == first ? system : "", m.content, " [/INST]");
    } else {
      absl::StrAppend(&out, m.content, "</s>");
    }
  }
  return out;
}

absl::StatusOr<ChatFormat> DetectChatFormat(const std::string& t) {
  if (absl::StrContains(t, "<|start_header_id|>") && absl::StrContains(t, "<|eot_id|>")) {
    return ChatFormat::kLlama3;
  }
  if (absl::StrContains(t, "[INST]") && absl::StrContains(t, "[/INST]")) {
    return ChatFormat::kMistralInstruct;
  }
  return absl::InvalidArgumentError(
      "unsupported chat template: hkv supports the Llama-3 and Mistral-Instruct formats");
}

absl::StatusOr<std::shared_ptr<const ChatTemplate>> LoadChatTemplate(const std::string& dir) {
  const std::string path = dir + "/tokenizer_config.json";
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("no ", path));
  nlohmann::json config = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (config.is_discarded() || !config.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, " is not a JSON object"));
  }
  auto it = config.find("chat_template");
  if (it == config.end() || !it->is_string()) {
    return absl::NotFoundError(absl::StrCat(path, " has no chat_template"));
  }
  auto format = DetectChatFormat(it->get<std::string>());
  if (!format.ok()) return format.status();
  return std::make_shared<const ChatTemplate>(*format);
}

}  // namespace hkv
