#pragma once
// Chat templates: turns chat messages into the prompt text a model was tuned on by rendering
// the model's own Jinja chat template (tokenizer/jinja/) exactly as transformers'
// apply_chat_template does: variables `messages` (a list of {role, content}), `tools` and
// `documents` (none), `add_generation_prompt`, and the special tokens tokenizer_config.json
// names (`bos_token`, `eos_token`, `unk_token`, `pad_token`; a string or an AddedToken
// object; a null token is left undefined, as transformers leaves it).
//
// Where the template comes from (first found wins, as in transformers and vLLM):
//   1. an explicit file (`--chat-template FILE`),
//   2. `chat_template.jinja` in the model directory,
//   3. `chat_template` in tokenizer_config.json: a string, or a list of {name, template}
//      (the one named "default").
//
// Immutable; Apply is thread-safe (each render has its own state and limits).

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "tokenizer/jinja/limits.h"
#include "tokenizer/jinja/template.h"

namespace hkv {

struct ChatMessage {
  std::string role;     // "system", "user", "assistant", ...: the template decides.
  std::string content;  // Text parts already joined by the caller.
};

// The special tokens a template may read; unset ones are undefined in the template.
struct ChatSpecialTokens {
  std::optional<std::string> bos_token;
  std::optional<std::string> eos_token;
  std::optional<std::string> unk_token;
  std::optional<std::string> pad_token;
};

class ChatTemplate {
 public:
  // Parses `source`. INVALID_ARGUMENT (naming `origin` and the line) when it does not parse.
  static absl::StatusOr<std::shared_ptr<const ChatTemplate>> Create(
      const std::string& source, ChatSpecialTokens tokens, std::string origin,
      const jinja::RenderLimits& limits = DefaultLimits());

  // The prompt text (BOS included as text when the template writes it, so encode it without
  // adding BOS). INVALID_ARGUMENT with the template's own message when it refuses the
  // conversation (raise_exception) or fails on it; RESOURCE_EXHAUSTED past the render limits.
  absl::StatusOr<std::string> Apply(const std::vector<ChatMessage>& messages,
                                    bool add_generation_prompt) const;

  // Where the template was read from (a path, or path + "#chat_template").
  const std::string& origin() const { return origin_; }
  const ChatSpecialTokens& tokens() const { return tokens_; }

  // 16 MiB of output, 256 MiB of strings built, 1M steps, depth 64.
  static jinja::RenderLimits DefaultLimits();

 private:
  ChatTemplate(jinja::Template t, ChatSpecialTokens tokens, std::string origin,
               const jinja::RenderLimits& limits)
      : template_(std::move(t)),
        tokens_(std::move(tokens)),
        origin_(std::move(origin)),
        limits_(limits) {}

  jinja::Template template_;
  ChatSpecialTokens tokens_;
  std::string origin_;
  jinja::RenderLimits limits_;
};

// Reads the special tokens from `model_dir`/tokenizer_config.json (none when it is missing).
absl::StatusOr<ChatSpecialTokens> LoadChatSpecialTokens(const std::string& model_dir);

// Loads the chat template of `model_dir` (see the order above; `override_path`, when not
// empty, is a Jinja file that wins over the model's own). NOT_FOUND when the model has none;
// INVALID_ARGUMENT when a file is malformed or the template does not parse.
absl::StatusOr<std::shared_ptr<const ChatTemplate>> LoadChatTemplate(
    const std::string& model_dir, const std::string& override_path = "");

}  // namespace hkv
