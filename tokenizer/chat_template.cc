#include "tokenizer/chat_template.h"

#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace hkv {
namespace {

using json = nlohmann::json;

// NOT_FOUND when `path` cannot be opened.
absl::StatusOr<std::string> ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

absl::StatusOr<json> ReadTokenizerConfig(const std::string& dir) {
  const std::string path = dir + "/tokenizer_config.json";
  auto text = ReadWholeFile(path);
  if (!text.ok()) return text.status();
  json config = json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (config.is_discarded() || !config.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, " is not a JSON object"));
  }
  return config;
}

// A special token as tokenizer_config.json writes it: "text" or {"content": "text", ...}.
std::optional<std::string> TokenText(const json& config, const char* key) {
  auto it = config.find(key);
  if (it == config.end()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) {
    return (*it)["content"].get<std::string>();
  }
  return std::nullopt;
}

ChatSpecialTokens TokensFrom(const json& config) {
  ChatSpecialTokens t;
  t.bos_token = TokenText(config, "bos_token");
  t.eos_token = TokenText(config, "eos_token");
  t.unk_token = TokenText(config, "unk_token");
  t.pad_token = TokenText(config, "pad_token");
  return t;
}

// The template in tokenizer_config.json's `chat_template`: a string, or a list of named
// templates of which "default" is the one apply_chat_template uses without a name.
absl::StatusOr<std::string> TemplateFromConfig(const json& config, const std::string& path) {
  auto it = config.find("chat_template");
  if (it == config.end() || it->is_null()) {
    return absl::NotFoundError(absl::StrCat(path, " has no chat_template"));
  }
  if (it->is_string()) return it->get<std::string>();
  if (it->is_array()) {
    for (const json& entry : *it) {
      if (entry.is_object() && entry.value("name", "") == "default" && entry.contains("template") &&
          entry["template"].is_string()) {
        return entry["template"].get<std::string>();
      }
    }
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": chat_template lists no template named \"default\""));
  }
  return absl::InvalidArgumentError(
      absl::StrCat(path, ": chat_template is neither a string nor a list of named templates"));
}

}  // namespace

jinja::RenderLimits ChatTemplate::DefaultLimits() {
  jinja::RenderLimits l;
  l.max_output_bytes = 16 << 20;
  l.max_work_bytes = 256 << 20;
  l.max_steps = 1'000'000;
  l.max_depth = 64;
  return l;
}

absl::StatusOr<std::shared_ptr<const ChatTemplate>> ChatTemplate::Create(
    const std::string& source, ChatSpecialTokens tokens, std::string origin,
    const jinja::RenderLimits& limits) {
  auto t = jinja::Template::Parse(source);
  if (!t.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("chat template ", origin, ": ", t.status().message()));
  }
  return std::shared_ptr<const ChatTemplate>(
      new ChatTemplate(std::move(*t), std::move(tokens), std::move(origin), limits));
}

absl::StatusOr<std::string> ChatTemplate::Apply(const std::vector<ChatMessage>& messages,
                                                bool add_generation_prompt) const {
  if (messages.empty()) return absl::InvalidArgumentError("chat has no messages");
  jinja::ValueList list;
  list.reserve(messages.size());
  for (const ChatMessage& m : messages) {
    jinja::ValueDict d;
    d.entries.reserve(2);
    d.entries.emplace_back("role", jinja::Value::String(m.role));
    d.entries.emplace_back("content", jinja::Value::String(m.content));
    list.push_back(jinja::Value::Dict(std::move(d)));
  }
  jinja::ValueDict vars;
  vars.Set("messages", jinja::Value::List(std::move(list)));
  vars.Set("tools", jinja::Value::None());
  vars.Set("documents", jinja::Value::None());
  vars.Set("add_generation_prompt", jinja::Value::Bool(add_generation_prompt));
  const std::pair<const char*, const std::optional<std::string>*> specials[] = {
      {"bos_token", &tokens_.bos_token},
      {"eos_token", &tokens_.eos_token},
      {"unk_token", &tokens_.unk_token},
      {"pad_token", &tokens_.pad_token}};
  for (const auto& [name, value] : specials) {
    if (value->has_value()) vars.Set(name, jinja::Value::String(**value));
  }
  return template_.Render(vars, limits_);
}

absl::StatusOr<ChatSpecialTokens> LoadChatSpecialTokens(const std::string& model_dir) {
  auto config = ReadTokenizerConfig(model_dir);
  if (config.status().code() == absl::StatusCode::kNotFound) return ChatSpecialTokens();
  if (!config.ok()) return config.status();
  return TokensFrom(*config);
}

absl::StatusOr<std::shared_ptr<const ChatTemplate>> LoadChatTemplate(
    const std::string& model_dir, const std::string& override_path) {
  auto tokens = LoadChatSpecialTokens(model_dir);
  if (!tokens.ok()) return tokens.status();
  if (!override_path.empty()) {
    auto source = ReadWholeFile(override_path);
    if (!source.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--chat-template: ", source.status().message()));
    }
    return ChatTemplate::Create(*source, *tokens, override_path);
  }
  const std::string jinja_path = model_dir + "/chat_template.jinja";
  if (auto source = ReadWholeFile(jinja_path); source.ok()) {
    return ChatTemplate::Create(*source, *tokens, jinja_path);
  }
  auto config = ReadTokenizerConfig(model_dir);
  if (!config.ok()) return config.status();
  const std::string path = model_dir + "/tokenizer_config.json";
  auto source = TemplateFromConfig(*config, path);
  if (!source.ok()) return source.status();
  return ChatTemplate::Create(*source, *tokens, path);
}

}  // namespace hkv
