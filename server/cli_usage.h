#pragma once
// The `hkv` command line's subcommands and their help. A command's help lists the flags it reads,
// each from its own registration (name, type, default, help string), so the text cannot drift
// from the flags. Called from main() only (the main thread, before and after flag parsing).

#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace hkv {

struct CommandSpec {
  std::string name;                // "serve".
  std::string args;                // The usage line after "hkv NAME", e.g. "[--config FILE] ...".
  std::string summary;             // One line: what it does.
  std::vector<std::string> flags;  // snake_case names of the registered flags it reads.
  int (*run)() = nullptr;          // Runs it; returns the process exit code.
};

// Returns the command named `name`, or nullptr.
const CommandSpec* FindCommand(absl::Span<const CommandSpec> commands, absl::string_view name);

// Formats `hkv --help`: the usage line, each command with its summary, where to find more.
std::string ProgramHelp(absl::Span<const CommandSpec> commands);

// Formats `hkv NAME --help`: its usage line, summary and, per flag, `--kebab-name=TYPE`, the
// default and the help string (without a leading "generate: "-style command tag).
// REQUIRES: every name in `command.flags` is a registered flag.
std::string CommandHelp(const CommandSpec& command);

// Registered flags defined in the same source file as flag `anchor` (e.g. every flag of main.cc),
// sorted by name.
std::vector<std::string> FlagsDefinedBeside(absl::string_view anchor);

// Removes the help requests absl would answer with its own filtered listing (`--help`, `-help`,
// `--helpshort`, `-helpshort`, `-h`) from `args` (args[0] is the program) and returns whether
// there was one. `--helpfull` and `--help=SUBSTRING` stay for absl.
bool TakeHelpFlags(std::vector<std::string>* args);

}  // namespace hkv
