// The engine against Python's Jinja2: tests/data/jinja_goldens.json holds one small template
// per construct with what Jinja2 (transformers' settings) renders for it, made by
// tests/make_chat_goldens.py. Then limits, hostile templates and errors.
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tokenizer/jinja/template.h"

namespace hkv::jinja {
namespace {

Value FromJson(const nlohmann::ordered_json& j) {
  if (j.is_null()) return Value::None();
  if (j.is_boolean()) return Value::Bool(j.get<bool>());
  if (j.is_number_integer()) return Value::Int(j.get<int64_t>());
  if (j.is_number()) return Value::Float(j.get<double>());
  if (j.is_string()) return Value::String(j.get<std::string>());
  if (j.is_array()) {
    ValueList items;
    for (const auto& x : j) items.push_back(FromJson(x));
    return Value::List(std::move(items));
  }
  ValueDict d;
  for (auto it = j.begin(); it != j.end(); ++it) d.Set(it.key(), FromJson(it.value()));
  return Value::Dict(std::move(d));
}

absl::StatusOr<std::string> Render(const std::string& source, const ValueDict& vars = {},
                                   const RenderLimits& limits = RenderLimits()) {
  auto t = Template::Parse(source);
  if (!t.ok()) return t.status();
  return t->Render(vars, limits);
}

TEST(JinjaGoldenTest, EveryConstructRendersAsJinja2Does) {
  std::ifstream in("tests/data/jinja_goldens.json");
  ASSERT_TRUE(in) << "run from the source root";
  // nlohmann's ordered_json keeps the variables' key order, which items() and tojson show.
  nlohmann::ordered_json cases = nlohmann::ordered_json::parse(in);
  ASSERT_GE(cases.size(), 40u);
  for (auto it = cases.begin(); it != cases.end(); ++it) {
    SCOPED_TRACE(it.key());
    const auto& c = it.value();
    const std::string source = c["template"].get<std::string>();
    ValueDict vars;
    for (auto v = c["variables"].begin(); v != c["variables"].end(); ++v) {
      vars.Set(v.key(), FromJson(v.value()));
    }
    auto out = Render(source, vars);
    if (c.contains("text")) {
      ASSERT_TRUE(out.ok()) << out.status();
      EXPECT_EQ(*out, c["text"].get<std::string>());
    } else {
      ASSERT_FALSE(out.ok()) << *out;
      EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument) << out.status();
    }
  }
}

TEST(JinjaTest, RaiseExceptionCarriesTheTemplatesMessage) {
  auto out = Render("{% if x %}{{ raise_exception('no ' ~ x) }}{% endif %}",
                    ValueDict{{{"x", Value::String("system role")}}});
  EXPECT_EQ(out.status(), absl::InvalidArgumentError("no system role"));
}

TEST(JinjaTest, UndefinedMisuseNamesTheVariable) {
  auto out =
      Render("{{ messages[0].content.strip() }}", ValueDict{{{"messages", Value::List({})}}});
  ASSERT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(out.status().message().find("no element 0"), std::string::npos) << out.status();
  out = Render("{{ nope.x }}");
  EXPECT_EQ(out.status(), absl::InvalidArgumentError("'nope' is undefined"));
}

TEST(JinjaTest, SyntaxErrorsNameTheLine) {
  for (const char* bad : {"{{ 1 + }}", "{% if x %}no end", "{% for x in %}{% endfor %}",
                          "{{ 'unclosed }}", "{% frobnicate %}", "{# open", "{{ x", "{% endif %}",
                          "{{ a b }}", "{{ x[1:2:3:4] }}", "{% set %}", "{{ @ }}",
                          "{% if false %}{{ x | frobnicate }}{% endif %}", "{{ x is shiny }}"}) {
    SCOPED_TRACE(bad);
    auto t = Template::Parse(bad);
    ASSERT_FALSE(t.ok());
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(t.status().message().find("line"), std::string::npos) << t.status();
  }
  auto t = Template::Parse("ok\n\n{{ 1 + }}");
  EXPECT_NE(t.status().message().find("line 3"), std::string::npos) << t.status();
}

TEST(JinjaTest, HugeOutputIsRefused) {
  RenderLimits limits;
  limits.max_output_bytes = 1 << 20;
  // String repetition, concatenation in a loop, and plain output in nested loops.
  for (const char* hostile :
       {"{{ 'x' * 100000000000 }}", "{{ 'ab' * 600000 }}",
        "{% set ns = namespace(s='x') %}{% for i in range(100) %}{% set ns.s = ns.s ~ ns.s %}"
        "{% endfor %}",
        "{% for i in range(100000) %}{% for j in range(100000) %}xxxxxxxxxx{% endfor %}"
        "{% endfor %}",
        "{{ ([1] * 100000) | tojson(indent=64) }}"}) {
    SCOPED_TRACE(hostile);
    auto out = Render(hostile, {}, limits);
    EXPECT_EQ(out.status().code(), absl::StatusCode::kResourceExhausted) << out.status();
  }
}

TEST(JinjaTest, LongLoopsStopAtTheStepLimit) {
  RenderLimits limits;
  limits.max_steps = 100000;
  auto out = Render(
      "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}"
      "{% endfor %}",
      {}, limits);
  EXPECT_EQ(out.status().code(), absl::StatusCode::kResourceExhausted) << out.status();
  out = Render("{{ range(100001) | length }}");
  EXPECT_EQ(out.status().code(), absl::StatusCode::kResourceExhausted) << out.status();
  out = Render("{{ range(100000) | length }}");
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(*out, "100000");
}

TEST(JinjaTest, DeepNestingIsRefused) {
  // Recursion through a macro.
  auto out = Render("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}");
  EXPECT_EQ(out.status().code(), absl::StatusCode::kResourceExhausted) << out.status();
  // Expressions and blocks nested past the parser's depth.
  std::string deep_expr = "{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}";
  EXPECT_EQ(Template::Parse(deep_expr).status().code(), absl::StatusCode::kInvalidArgument);
  std::string deep_not = "{{ " + std::string(0, ' ');
  for (int i = 0; i < 5000; ++i) deep_not += "not ";
  deep_not += "1 }}";
  EXPECT_EQ(Template::Parse(deep_not).status().code(), absl::StatusCode::kInvalidArgument);
  std::string deep_if;
  for (int i = 0; i < 1000; ++i) deep_if += "{% if 1 %}";
  for (int i = 0; i < 1000; ++i) deep_if += "{% endif %}";
  EXPECT_EQ(Template::Parse(deep_if).status().code(), absl::StatusCode::kInvalidArgument);
  // Within the limits the same shapes work.
  std::string ok_if;
  for (int i = 0; i < 50; ++i) ok_if += "{% if 1 %}";
  ok_if += "x";
  for (int i = 0; i < 50; ++i) ok_if += "{% endif %}";
  EXPECT_EQ(*Render(ok_if), "x");
}

TEST(JinjaTest, ClientTextIsNeverTemplateCode) {
  ValueDict vars{{{"m", Value::String("{{ 7 * 7 }}{% for x in range(9) %}x{% endfor %}")}}};
  EXPECT_EQ(*Render("[{{ m }}]", vars), "[{{ 7 * 7 }}{% for x in range(9) %}x{% endfor %}]");
}

TEST(JinjaTest, OneTemplateRendersFromManyThreadsAtOnce) {
  auto t = Template::Parse("{% for m in messages %}{{ m | upper }}{% endfor %}");
  ASSERT_TRUE(t.ok());
  std::vector<std::thread> threads;
  std::vector<std::string> outs(4);
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] {
      ValueDict vars{
          {{"messages", Value::List({Value::String("a"), Value::String(std::to_string(i))})}}};
      for (int k = 0; k < 200; ++k) outs[i] = *t->Render(vars);
    });
  }
  for (auto& th : threads) th.join();
  for (int i = 0; i < 4; ++i) EXPECT_EQ(outs[i], "A" + std::to_string(i));
}

}  // namespace
}  // namespace hkv::jinja
