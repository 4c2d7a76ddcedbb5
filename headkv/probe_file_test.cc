#include "headkv/probe_file.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/paths.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace hkv {
namespace {

using ::testing::HasSubstr;

std::string Slice(const Probe& p) {
  return p.prompt.substr(p.span_begin, p.span_end - p.span_begin);
}

TEST(ProbeFileTest, ParsesEveryShape) {
  auto probes = ParseProbeFile(
      R"({"id": "a", "prompt": "Code is 42. Q?", "question": "Q?", "answer": "42", "answer_char_span": [8, 10]})"
      "\n\n"
      R"({"prompt": "x. Code is 42. Q?", "question": "Q?", "answer": "42", "real_needle": "Code is 42."})"
      "\n"
      R"({"haystack": "One. Two. Three.", "needle": "Code is 42.", "depth": 0.5, "question": "Q?", "answer": "42"})"
      "\n");
  ASSERT_TRUE(probes.ok()) << probes.status();
  ASSERT_EQ(probes->size(), 3u);
  EXPECT_EQ((*probes)[0].id, "a");
  EXPECT_EQ(Slice((*probes)[0]), "42");
  EXPECT_EQ((*probes)[1].id, "line 3");
  EXPECT_EQ(Slice((*probes)[1]), "Code is 42.");
  EXPECT_EQ((*probes)[2].prompt, "One. Code is 42. Two. Three.");  // 0.5 * 16 = 8 -> after "One.".
  EXPECT_EQ(Slice((*probes)[2]), "Code is 42.");
  EXPECT_EQ((*probes)[2].question, "Q?");
  EXPECT_EQ((*probes)[2].answer, "42");
}

TEST(ProbeFileTest, ReportsTheBadLine) {
  const std::string good =
      R"({"prompt": "p 42", "question": "q", "answer": "42", "answer_char_span": [2, 4]})";
  struct Case {
    std::string line;
    const char* message;
  };
  for (const Case& c : std::vector<Case>{
           {"{", "not a JSON object"},
           {"[1]", "not a JSON object"},
           {R"({"prompt": "p", "answer": "a", "real_needle": "p"})", "missing \"question\""},
           {R"({"prompt": 3, "question": "q", "answer": "a"})", "\"prompt\" must be a string"},
           {R"({"prompt": "p", "question": "q", "answer": "a"})", "missing \"answer_char_span\""},
           {R"({"prompt": "p", "question": "q", "answer": "a", "answer_char_span": [0, 2]})",
            "outside the 1-byte prompt"},
           {R"({"prompt": "pp", "question": "q", "answer": "a", "answer_char_span": [1, 1]})",
            "is empty"},
           {R"({"prompt": "p", "question": "q", "answer": "a", "answer_char_span": [0]})",
            "[begin, end) integers"},
           {R"({"prompt": "p", "question": "q", "answer": "a", "real_needle": "z"})",
            "not in the prompt"},
           {R"({"haystack": "h.", "needle": "n", "question": "q", "answer": "a"})", "\"depth\""},
           {R"({"haystack": "h.", "needle": "n", "depth": 2, "question": "q", "answer": "a"})",
            "in [0, 1]"},
           {R"({"haystack": "h", "prompt": "p", "question": "q", "answer": "a"})", "not both"},
       }) {
    auto probes = ParseProbeFile(absl::StrCat(good, "\n", good, "\n", c.line, "\n"));
    ASSERT_FALSE(probes.ok()) << c.line;
    EXPECT_EQ(probes.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(probes.status().message(), HasSubstr("line 3: ")) << c.line;
    EXPECT_THAT(probes.status().message(), HasSubstr(c.message)) << c.line;
  }
  EXPECT_THAT(ParseProbeFile("\n \n").status().message(), HasSubstr("no probes"));
}

TEST(ProbeFileTest, EnforcesLimits) {
  const std::string good =
      R"({"prompt": "p 42", "question": "q", "answer": "42", "answer_char_span": [2, 4]})";
  const std::string three = absl::StrCat(good, "\n", good, "\n", good);
  EXPECT_TRUE(ParseProbeFile(three, {.max_line_bytes = good.size(), .max_probes = 3}).ok());
  EXPECT_THAT(
      ParseProbeFile(three, {.max_line_bytes = good.size(), .max_probes = 2}).status().message(),
      HasSubstr("line 3: more than 2 probes"));
  EXPECT_THAT(ParseProbeFile(three, {.max_line_bytes = good.size() - 1, .max_probes = 3})
                  .status()
                  .message(),
              HasSubstr("line 1: "));
  EXPECT_EQ(LoadProbeFile("/nonexistent/probes.jsonl").status().code(),
            absl::StatusCode::kNotFound);
}

TEST(ProbeFileTest, LoadsTheNeedleFixture) {
  auto probes = LoadProbeFile(SourceDir() + "/tests/data/needle/probes_score.jsonl");
  ASSERT_TRUE(probes.ok()) << probes.status();
  ASSERT_EQ(probes->size(), 40u);
  for (const Probe& p : *probes) {
    EXPECT_EQ(Slice(p), p.answer) << p.id;
    EXPECT_THAT(p.prompt, HasSubstr(p.question)) << p.id;
  }
  EXPECT_EQ((*probes)[0].id, "probe-single-1024-0");
}

TEST(NeedleInsertionPointTest, BacksOffToASentenceEnd) {
  const std::string text = "Ab. Cd! Ef? Gh";  // Sentence ends at 3, 7, 11.
  EXPECT_EQ(NeedleInsertionPoint(text, 0.0), 0u);
  EXPECT_EQ(NeedleInsertionPoint(text, 0.2), 0u);  // 2: none at or before.
  EXPECT_EQ(NeedleInsertionPoint(text, 3.0 / 14), 3u);
  EXPECT_EQ(NeedleInsertionPoint(text, 0.5), 7u);  // 7.
  EXPECT_EQ(NeedleInsertionPoint(text, 0.99), 11u);
  EXPECT_EQ(NeedleInsertionPoint(text, 1.0), 14u);     // Appends.
  EXPECT_EQ(NeedleInsertionPoint("a.b. c", 0.9), 4u);  // "a.b" is no sentence end.
  EXPECT_EQ(NeedleInsertionPoint("End.", 0.99), 0u);
  EXPECT_EQ(NeedleInsertionPoint("", 0.5), 0u);
}

TEST(ProbeGridTest, BuildsLengthsTimesDepths) {
  const std::string haystack = "The sun rose. A dog ran. The cat slept. Rain fell.";
  const NeedleSpec spec{"The code is 7.", "Question: the code? Answer:", "7"};
  GridOptions options{.context_lengths = {60, 80}, .depths = {0.0, 0.5, 1.0}};
  auto grid = BuildProbeGrid(haystack, spec, options);
  ASSERT_TRUE(grid.ok()) << grid.status();
  ASSERT_EQ(grid->size(), 6u);
  for (const Probe& p : *grid) {
    EXPECT_EQ(Slice(p), "7") << p.id;
    EXPECT_EQ(p.question, spec.question);
    EXPECT_THAT(p.prompt, HasSubstr(" The code is 7."));
    EXPECT_TRUE(p.prompt.ends_with(" " + spec.question)) << p.prompt;
  }
  // The whole haystack (50) + needle (15) + question (28) = 93 > 80, so the
  // haystack is cut to 80 - 15 - 28 = 37 bytes.
  EXPECT_EQ((*grid)[3].prompt,
            " The code is 7.The sun rose. A dog ran. The cat slep " + spec.question);
  EXPECT_EQ((*grid)[4].prompt,
            "The sun rose. The code is 7. A dog ran. The cat slep " + spec.question);
  EXPECT_EQ((*grid)[5].prompt,
            "The sun rose. A dog ran. The cat slep The code is 7. " + spec.question);
  EXPECT_EQ((*grid)[0].id, "grid-60-0");
  // 60: a 17-byte haystack; 0.5 * 17 = 8 has no sentence end before it, so the needle leads.
  EXPECT_EQ((*grid)[1].prompt, " The code is 7.The sun rose. A d " + spec.question);
}

TEST(ProbeGridTest, UsesTheCallersLengthAndRejectsBadGrids) {
  const NeedleSpec spec{"Code 7.", "Q?", "7"};
  // Words as the length unit: 2 (needle) + 1 (question) + 3 haystack words = 6.
  GridOptions words{.context_lengths = {6}, .depths = {1.0}, .length = [](std::string_view s) {
                      int64_t n = 0;
                      for (size_t i = 0; i < s.size(); ++i) {
                        n += s[i] != ' ' && (i == 0 || s[i - 1] == ' ');
                      }
                      return n;
                    }};
  auto grid = BuildProbeGrid("a b. c d e.", spec, words);
  ASSERT_TRUE(grid.ok()) << grid.status();
  EXPECT_EQ((*grid)[0].prompt, "a b. c  Code 7. Q?");
  EXPECT_FALSE(BuildProbeGrid("a.", spec, {.context_lengths = {}, .depths = {0.5}}).ok());
  EXPECT_FALSE(BuildProbeGrid("a.", spec, {.context_lengths = {9}, .depths = {1.5}}).ok());
  EXPECT_FALSE(
      BuildProbeGrid("a.", {"Code.", "Q?", "7"}, {.context_lengths = {99}, .depths = {0}}).ok());
  EXPECT_THAT(
      BuildProbeGrid("a.", spec, {.context_lengths = {3}, .depths = {0}}).status().message(),
      HasSubstr("cannot hold"));
}

}  // namespace
}  // namespace hkv
