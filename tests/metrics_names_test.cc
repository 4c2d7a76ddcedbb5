// /metrics scraped over HTTP and read by a strict Prometheus text-format (0.0.4) parser
// written here: every line must parse, every sample must belong to a family declared by a TYPE
// line before it, families are contiguous and declared once, no series repeats, and histograms
// are cumulative with +Inf equal to _count. Then the vLLM-compatible names must be there, with
// their model_name label and values that follow a real request.

#include <cmath>
#include <map>
#include <regex>
#include <set>
#include <sstream>

#include "gmock/gmock.h"
#include "gtest/gtest-spi.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "server/metrics.h"
#include "tests/ops_test_util.h"
#include "tests/server_test_util.h"

namespace hkv::testing {
namespace {

struct Sample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

struct Exposition {
  std::map<std::string, std::string> types;  // family -> type
  std::vector<Sample> samples;

  // The samples named `name` whose labels include `want`.
  std::vector<Sample> Find(const std::string& name,
                           const std::map<std::string, std::string>& want = {}) const {
    std::vector<Sample> out;
    for (const Sample& s : samples) {
      if (s.name != name) continue;
      bool match = true;
      for (const auto& [k, v] : want) match = match && s.labels.count(k) && s.labels.at(k) == v;
      if (match) out.push_back(s);
    }
    return out;
  }
};

// Parses `{a="x",b="y"}` at text[*pos]; false on any deviation from the format.
bool ParseLabels(const std::string& text, size_t* pos, std::map<std::string, std::string>* out) {
  static const std::regex kLabelName("[a-zA-Z_][a-zA-Z0-9_]*");
  size_t i = *pos + 1;  // past '{'
  while (i < text.size() && text[i] != '}') {
    const size_t eq = text.find('=', i);
    if (eq == std::string::npos) return false;
    const std::string name = text.substr(i, eq - i);
    if (!std::regex_match(name, kLabelName) || eq + 1 >= text.size() || text[eq + 1] != '"') {
      return false;
    }
    std::string value;
    size_t j = eq + 2;
    for (; j < text.size() && text[j] != '"'; ++j) {
      if (text[j] == '\\') {
        if (++j >= text.size()) return false;
        if (text[j] == 'n') {
          value += '\n';
        } else if (text[j] == '\\' || text[j] == '"') {
          value += text[j];
        } else {
          return false;
        }
      } else {
        value += text[j];
      }
    }
    if (j >= text.size() || !out->emplace(name, value).second) return false;
    i = j + 1;
    if (i < text.size() && text[i] == ',') ++i;
  }
  if (i >= text.size()) return false;
  *pos = i + 1;
  return true;
}

// The family a sample belongs to, given the declared types; "" when none.
std::string FamilyOf(const std::string& name, const std::map<std::string, std::string>& types) {
  if (types.count(name)) return types.at(name) == "histogram" ? "" : name;
  for (const char* suffix : {"_bucket", "_sum", "_count"}) {
    const std::string s = suffix;
    if (name.size() > s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0) {
      const std::string base = name.substr(0, name.size() - s.size());
      if (types.count(base) && types.at(base) == "histogram") return base;
    }
  }
  return "";
}

// Fills `out` with the parsed exposition, or fails the test naming the first bad line.
void ParseStrict(const std::string& text, Exposition* out) {
  static const std::regex kName("[a-zA-Z_:][a-zA-Z0-9_:]*");
  static const std::set<std::string> kTypes = {"counter", "gauge", "histogram", "summary",
                                               "untyped"};
  Exposition& e = *out;
  std::set<std::string> finished_families;
  std::set<std::string> series;
  std::string current;
  std::istringstream in(text);
  std::string line;
  int n = 0;
  EXPECT_FALSE(text.empty());
  EXPECT_EQ(text.back(), '\n') << "the exposition must end with a newline";
  while (std::getline(in, line)) {
    ++n;
    SCOPED_TRACE(::testing::Message() << "line " << n << ": " << line);
    EXPECT_FALSE(line.empty()) << "blank line";
    if (line.empty()) continue;
    if (line[0] == '#') {
      std::istringstream words(line);
      std::string hash, kind, name, type;
      words >> hash >> kind >> name;
      if (kind == "TYPE") {
        words >> type;
        EXPECT_TRUE(std::regex_match(name, kName));
        EXPECT_TRUE(kTypes.count(type)) << type;
        EXPECT_TRUE(e.types.emplace(name, type).second) << "TYPE declared twice";
      } else if (kind == "HELP") {
        EXPECT_TRUE(std::regex_match(name, kName));
      }
      continue;
    }
    Sample s;
    size_t pos = 0;
    while (pos < line.size() && line[pos] != '{' && line[pos] != ' ') ++pos;
    s.name = line.substr(0, pos);
    ASSERT_TRUE(std::regex_match(s.name, kName)) << "bad metric name";
    if (pos < line.size() && line[pos] == '{') {
      ASSERT_TRUE(ParseLabels(line, &pos, &s.labels)) << "bad labels";
    }
    ASSERT_TRUE(pos < line.size() && line[pos] == ' ') << "no value";
    const std::string value = line.substr(pos + 1);
    ASSERT_EQ(value.find(' '), std::string::npos) << "timestamps are not used";
    char* end = nullptr;
    s.value = std::strtod(value.c_str(), &end);
    ASSERT_TRUE(!value.empty() && *end == '\0') << "bad value '" << value << "'";
    const std::string family = FamilyOf(s.name, e.types);
    ASSERT_FALSE(family.empty()) << "sample of an undeclared family";
    if (family != current) {
      ASSERT_FALSE(finished_families.count(family)) << "family split in two";
      if (!current.empty()) finished_families.insert(current);
      current = family;
    }
    std::string key = s.name;
    for (const auto& [k, v] : s.labels) key += "|" + k + "=" + v;
    ASSERT_TRUE(series.insert(key).second) << "series repeated";
    e.samples.push_back(std::move(s));
  }
}

// A histogram's buckets are cumulative, reach +Inf = _count, and their largest finite bound
// is returned.
double CheckHistogram(const Exposition& e, const std::string& name,
                      const std::map<std::string, std::string>& labels) {
  SCOPED_TRACE(name);
  EXPECT_EQ(e.types.count(name) ? e.types.at(name) : "", "histogram");
  std::vector<Sample> buckets = e.Find(name + "_bucket", labels);
  EXPECT_GE(buckets.size(), 2u);
  double last = 0, largest = 0;
  for (const Sample& b : buckets) {
    EXPECT_GE(b.value, last) << "buckets must be cumulative";
    last = b.value;
    const double le = std::strtod(b.labels.at("le").c_str(), nullptr);
    if (std::isfinite(le)) largest = std::max(largest, le);
  }
  EXPECT_EQ(buckets.back().labels.at("le"), "+Inf");
  std::vector<Sample> count = e.Find(name + "_count", labels);
  EXPECT_EQ(count.size(), 1u);
  if (!count.empty()) EXPECT_EQ(count[0].value, last);
  EXPECT_EQ(e.Find(name + "_sum", labels).size(), 1u);
  return largest;
}

TEST(MetricsNamesTest, ScrapeParsesStrictlyAndHasVllmNames) {
  EngineBundle& bundle = SharedEngine();
  OpsServer s = StartOpsServer(bundle, {});
  auto stub = hkv::v1::Generation::NewStub(LoopbackChannel(s.port));
  StreamResult r = RunStream(stub.get(), GreedyIds({1, 2, 3}, 6));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();

  MetricsServer metrics(&bundle.engine->metrics());
  ASSERT_TRUE(metrics.Start("127.0.0.1", 0).ok());
  httplib::Client http("127.0.0.1", metrics.port());
  auto res = http.Get("/metrics");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200);
  Exposition e;
  ParseStrict(res->body, &e);
  if (HasFatalFailure()) return;

  const std::map<std::string, std::string> model = {{"model_name", "stories260K"}};
  for (const char* gauge :
       {"vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"}) {
    EXPECT_EQ(e.types.count(gauge) ? e.types.at(gauge) : "", "gauge") << gauge;
    EXPECT_EQ(e.Find(gauge, model).size(), 1u) << gauge;
  }
  for (const char* counter : {"vllm:num_preemptions_total", "vllm:prompt_tokens_total",
                              "vllm:generation_tokens_total", "vllm:request_success_total"}) {
    EXPECT_EQ(e.types.count(counter) ? e.types.at(counter) : "", "counter") << counter;
    EXPECT_FALSE(e.Find(counter, model).empty()) << counter;
  }
  // The vLLM names carry the same values as hkv's own.
  EXPECT_EQ(e.Find("vllm:generation_tokens_total", model)[0].value,
            e.Find("hkv_generation_tokens_total")[0].value);
  EXPECT_GE(e.Find("vllm:generation_tokens_total", model)[0].value, 6);
  EXPECT_GE(e.Find("vllm:prompt_tokens_total", model)[0].value, 3);
  auto length = e.Find("vllm:request_success_total", {{"finished_reason", "length"}});
  ASSERT_EQ(length.size(), 1u);
  EXPECT_GE(length[0].value, 1);
  const double usage = e.Find("vllm:kv_cache_usage_perc", model)[0].value;
  EXPECT_GE(usage, 0);
  EXPECT_LE(usage, 1);
  auto info = e.Find("vllm:cache_config_info", model);
  ASSERT_EQ(info.size(), 1u);
  EXPECT_EQ(info[0].value, 1);
  EXPECT_EQ(info[0].labels.at("block_size"), "16");

  EXPECT_GE(CheckHistogram(e, "vllm:time_to_first_token_seconds", model), 600);
  EXPECT_GE(CheckHistogram(e, "vllm:e2e_request_latency_seconds", model), 600);
  CheckHistogram(e, "vllm:inter_token_latency_seconds", model);
  CheckHistogram(e, "vllm:request_queue_time_seconds", model);
  CheckHistogram(e, "hkv_time_to_first_token_seconds", {});
  EXPECT_GE(e.Find("vllm:e2e_request_latency_seconds_count", model)[0].value, 1);

  // Where the engine loop's time went: every part of a step that ran is counted (a shared
  // engine may have run more requests before this one).
  EXPECT_EQ(e.types.count("hkv_engine_step_seconds_total")
                ? e.types.at("hkv_engine_step_seconds_total")
                : "",
            "counter");
  for (const char* phase : {"schedule", "execute", "update", "deliver"}) {
    auto v = e.Find("hkv_engine_step_seconds_total", {{"phase", phase}});
    ASSERT_EQ(v.size(), 1u) << phase;
    EXPECT_GT(v[0].value, 0) << phase;
  }
  const double steps = e.Find("hkv_engine_steps_total")[0].value;
  const double prefill_steps = e.Find("hkv_engine_prefill_steps_total")[0].value;
  EXPECT_GE(steps, 6);
  EXPECT_GE(prefill_steps, 1);
  // Prompt tokens run in prefill steps, and every other step runs at least one token.
  EXPECT_GE(e.Find("hkv_engine_step_tokens_total")[0].value,
            e.Find("hkv_prompt_tokens_total")[0].value + (steps - prefill_steps));
  EXPECT_LT(prefill_steps, steps);
}

TEST(MetricsNamesTest, StrictParserRejectsMalformedText) {
  // The parser must be able to fail: each of these breaks one rule.
  for (const char* bad : {"# TYPE a gauge\na{x=\"1} 1\n", "b 1\n", "# TYPE c gauge\nc one\n",
                          "# TYPE d gauge\nd 1\nd 2\n"}) {
    bool failed = false;
    {
      ::testing::TestPartResultArray results;
      ::testing::ScopedFakeTestPartResultReporter reporter(
          ::testing::ScopedFakeTestPartResultReporter::INTERCEPT_ONLY_CURRENT_THREAD, &results);
      Exposition e;
      ParseStrict(bad, &e);
      failed = results.size() > 0;
    }
    EXPECT_TRUE(failed) << "accepted: " << bad;
  }
}

}  // namespace
}  // namespace hkv::testing
