// Guards "`hkv serve --help` prints 'No flags matched' instead of its flags": `hkv --help`,
// `hkv help [COMMAND]` and `hkv COMMAND --help` print a usage line and the command's flags (name,
// type, default, help) and exit 0; an unknown command is an error (exit 2) that lists the
// commands; every flag of the binary shows under some command.

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace hkv {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

struct RunResult {
  int status = -1;
  std::string out;
  std::string err;
};

// Runs `hkv args` (no stdin) and collects its exit status, stdout and stderr.
RunResult RunHkv(const std::string& args) {
  char err_path[] = "/tmp/hkv_cli_help_XXXXXX";
  const int fd = mkstemp(err_path);
  EXPECT_GE(fd, 0);
  close(fd);
  const std::string command = std::string(HKV_BINARY) + " " + args + " </dev/null 2>" + err_path;
  RunResult run;
  FILE* pipe = popen(command.c_str(), "r");
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) run.out.append(buffer, n);
  const int raw = pclose(pipe);
  run.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  std::ifstream in(err_path);
  std::stringstream err;
  err << in.rdbuf();
  run.err = err.str();
  unlink(err_path);
  return run;
}

// The flag names (snake_case) a command's help lists: lines "  --kebab-name[=TYPE]  (default...".
std::set<std::string> ListedFlags(const std::string& help) {
  std::set<std::string> names;
  for (absl::string_view line : absl::StrSplit(help, '\n')) {
    if (!absl::StartsWith(line, "  --")) continue;
    line.remove_prefix(4);
    const absl::string_view name = line.substr(0, line.find_first_of("= "));
    names.insert(absl::StrReplaceAll(name, {{"-", "_"}}));
  }
  return names;
}

const char* const kCommands[] = {"generate",    "serve", "headkv-plan", "headkv-score",
                                 "bench-serve", "eval"};

TEST(CliHelpTest, ProgramHelpListsEveryCommandAndExitsZero) {
  for (const char* args : {"--help", "help", "-h", "--helpshort"}) {
    const RunResult run = RunHkv(args);
    EXPECT_EQ(run.status, 0) << args;
    EXPECT_THAT(run.out, StartsWith("Usage: hkv COMMAND")) << args;
    for (const char* command : kCommands) EXPECT_THAT(run.out, HasSubstr(command)) << args;
    EXPECT_THAT(run.out + run.err, Not(HasSubstr("No flags matched"))) << args;
  }
}

TEST(CliHelpTest, EachCommandsHelpListsItsOwnFlagsWithDefaults) {
  struct Case {
    const char* command;
    std::vector<std::string> lines;  // Flag lines (and help text) that must appear.
    std::vector<std::string> absent;
  };
  const Case cases[] = {
      {"serve",
       {"  --port=INT  (default: 50051)\n      gRPC port\n", "  --config=STRING  (default: \"\")",
        "  --max-queue=INT  (default: 1024)", "  --print-config  (default: false)"},
       {"--prompt=", "--target="}},
      {"generate",
       {"  --max-tokens=INT  (default: 256)\n      tokens to generate at most\n",
        "  --prompt=STRING  (default: \"\")", "  --temperature=FLOAT  (default: 0)",
        "  --model=STRING"},
       {"--port=", "--target="}},
      {"headkv-plan",
       {"  --scores=STRING  (default: \"\")", "  --granularity=STRING  (default: \"kv_head\")",
        "  --json  (default: false)"},
       {"--port=", "--prompt="}},
      {"bench-serve",
       {"  --target=STRING  (default: \"127.0.0.1:50051\")", "  --concurrency=INT  (default: 8)"},
       {"--port=", "--prompt="}},
  };
  for (const Case& c : cases) {
    for (const std::string& args :
         {std::string(c.command) + " --help", std::string("help ") + c.command,
          std::string(c.command) + " -h"}) {
      const RunResult run = RunHkv(args);
      EXPECT_EQ(run.status, 0) << args << "\n" << run.err;
      EXPECT_THAT(run.out, StartsWith(std::string("Usage: hkv ") + c.command + " ")) << args;
      for (const std::string& line : c.lines) EXPECT_THAT(run.out, HasSubstr(line)) << args;
      for (const std::string& flag : c.absent) {
        EXPECT_THAT(run.out, Not(HasSubstr(flag))) << args;
      }
    }
  }
}

// Abseil's --helpfull still lists every flag; each flag of hkv's main.cc is under some command.
TEST(CliHelpTest, EveryFlagOfTheBinaryShowsUnderSomeCommand) {
  const RunResult full = RunHkv("--helpfull");
  std::set<std::string> defined;
  bool in_main = false;
  for (absl::string_view line : absl::StrSplit(full.out, '\n')) {
    if (absl::StartsWith(line, "  Flags from ")) in_main = absl::EndsWith(line, "server/main.cc:");
    if (!in_main || !absl::StartsWith(line, "    --")) continue;
    line.remove_prefix(6);
    defined.insert(std::string(line.substr(0, line.find(' '))));
  }
  ASSERT_GT(defined.size(), 40u) << full.out;
  EXPECT_EQ(defined.count("max_tokens"), 1u);
  std::set<std::string> listed;
  for (const char* command : kCommands) {
    const RunResult run = RunHkv(std::string(command) + " --help");
    ASSERT_EQ(run.status, 0) << command;
    const std::set<std::string> flags = ListedFlags(run.out);
    listed.insert(flags.begin(), flags.end());
  }
  for (const std::string& flag : defined) {
    EXPECT_EQ(listed.count(flag), 1u) << "--" << flag << " is in no command's --help";
  }
}

TEST(CliHelpTest, UnknownCommandIsAnErrorThatListsTheCommands) {
  for (const char* args : {"bogus", "help bogus", "bogus --help"}) {
    const RunResult run = RunHkv(args);
    EXPECT_EQ(run.status, 2) << args;
    EXPECT_THAT(run.err, HasSubstr("unknown command 'bogus'")) << args;
    for (const char* command : kCommands) EXPECT_THAT(run.err, HasSubstr(command)) << args;
    EXPECT_EQ(run.out, "") << args;
  }
  const RunResult none = RunHkv("");
  EXPECT_EQ(none.status, 2);
  EXPECT_THAT(none.err, HasSubstr("Usage: hkv COMMAND"));
}

}  // namespace
}  // namespace hkv
