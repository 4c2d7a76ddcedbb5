#include "server/cli_usage.h"

#include <algorithm>
#include <cstdint>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/reflection.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "common/logging.h"

namespace hkv {
namespace {

constexpr size_t kWidth = 100;
constexpr absl::string_view kIndent = "      ";  // Before a flag's help text.

// The value placeholder of a flag's type ("" for bool: `--json` alone means true).
std::string TypeName(const absl::CommandLineFlag& flag) {
  if (flag.IsOfType<bool>()) return "";
  if (flag.IsOfType<std::string>()) return "STRING";
  if (flag.IsOfType<double>() || flag.IsOfType<float>()) return "FLOAT";
  if (flag.IsOfType<int32_t>() || flag.IsOfType<int64_t>() || flag.IsOfType<uint64_t>()) {
    return "INT";
  }
  return "VALUE";
}

// The help strings of flags only some commands read start with their names ("generate: ...",
// "generate/bench-serve: ..."), for --helpfull; under one command's own help that tag is noise.
std::string WithoutCommandTag(const std::string& help) {
  const size_t colon = help.find(": ");
  if (colon == std::string::npos || colon == 0) return help;
  for (char c : help.substr(0, colon)) {
    if (!absl::ascii_islower(static_cast<unsigned char>(c)) && c != '-' && c != '/') return help;
  }
  return help.substr(colon + 2);
}

// Appends `text` word-wrapped to kWidth columns, each line starting with kIndent.
void AppendWrapped(const std::string& text, std::string* out) {
  std::string line(kIndent);
  for (absl::string_view word : absl::StrSplit(text, ' ', absl::SkipEmpty())) {
    if (line.size() > kIndent.size() && line.size() + 1 + word.size() > kWidth) {
      absl::StrAppend(out, line, "\n");
      line = std::string(kIndent);
    }
    if (line.size() > kIndent.size()) line += ' ';
    absl::StrAppend(&line, word);
  }
  absl::StrAppend(out, line, "\n");
}

void AppendFlag(const absl::CommandLineFlag& flag, std::string* out) {
  const std::string type = TypeName(flag);
  std::string fallback = flag.DefaultValue();
  if (flag.IsOfType<std::string>()) fallback = absl::StrCat("\"", fallback, "\"");
  absl::StrAppend(out, "  --", absl::StrReplaceAll(flag.Name(), {{"_", "-"}}),
                  type.empty() ? "" : "=", type, "  (default: ", fallback, ")\n");
  AppendWrapped(WithoutCommandTag(flag.Help()), out);
}

}  // namespace

const CommandSpec* FindCommand(absl::Span<const CommandSpec> commands, absl::string_view name) {
  for (const CommandSpec& c : commands) {
    if (c.name == name) return &c;
  }
  return nullptr;
}

std::string ProgramHelp(absl::Span<const CommandSpec> commands) {
  size_t width = 0;
  for (const CommandSpec& c : commands) width = std::max(width, c.name.size());
  std::string out = "Usage: hkv COMMAND [flags]\n\nCommands:\n";
  for (const CommandSpec& c : commands) {
    absl::StrAppend(&out, "  ", c.name, std::string(width + 2 - c.name.size(), ' '), c.summary,
                    "\n");
  }
  absl::StrAppend(&out,
                  "\n`hkv COMMAND --help` (or `hkv help COMMAND`) lists the flags of a command; "
                  "`hkv --helpfull` lists\nevery flag, Abseil's own included.\n");
  return out;
}

std::string CommandHelp(const CommandSpec& command) {
  std::string out =
      absl::StrCat("Usage: hkv ", command.name, " ", command.args, "\n\n", command.summary,
                   "\n\nFlags (--kebab-case or --snake_case; "
                   "--flag=VALUE or --flag VALUE):\n");
  for (const std::string& name : command.flags) {
    const absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    HKV_CHECK(flag != nullptr) << "hkv " << command.name << " lists unregistered flag --" << name;
    AppendFlag(*flag, &out);
  }
  return out;
}

std::vector<std::string> FlagsDefinedBeside(absl::string_view anchor) {
  const absl::CommandLineFlag* anchor_flag = absl::FindCommandLineFlag(anchor);
  HKV_CHECK(anchor_flag != nullptr) << "no flag --" << anchor;
  const std::string file = anchor_flag->Filename();
  std::vector<std::string> names;
  for (const auto& [name, flag] : absl::GetAllFlags()) {
    if (flag->Filename() == file) names.emplace_back(name);
  }
  std::sort(names.begin(), names.end());
  return names;
}

bool TakeHelpFlags(std::vector<std::string>* args) {
  const auto is_help = [](const std::string& a) {
    return a == "--help" || a == "-help" || a == "--helpshort" || a == "-helpshort" || a == "-h";
  };
  if (args->size() <= 1) return false;
  const auto end = std::remove_if(args->begin() + 1, args->end(), is_help);
  const bool found = end != args->end();
  args->erase(end, args->end());
  return found;
}

}  // namespace hkv
