#!/usr/bin/env python3
"""Makes the expected chat-template renders that hkv's Jinja engine is tested against.

transformers' apply_chat_template renders a model's chat template with Python's Jinja2 in an
ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, loopcontrols), with
raise_exception and strftime_now as globals and a tojson filter that calls
json.dumps(ensure_ascii=False), passing messages, tools=None, documents=None,
add_generation_prompt and the tokenizer's special tokens (bos_token, eos_token, ... when set).
This script does the same with Debian's python3-jinja2 (transformers itself is not needed), for

  - every tests/data/chat_templates/<family>/tokenizer_config.json, on the conversations below
    with add_generation_prompt on and off -> tests/data/chat_templates/goldens.json;
  - small templates, one per Jinja construct the engine covers -> tests/data/jinja_goldens.json.

A render that raises gives {"error": message} instead of {"text": ...}. The C++ tests
(tokenizer/chat_template_test, tokenizer/jinja/jinja_test) read the JSON files; the ctest
`chat_goldens_up_to_date` runs this script with --check, which fails when a checked-in file
differs from what Jinja2 renders now.

    /usr/bin/python3 tests/make_chat_goldens.py [--check]
"""
import json
import os
import sys
from datetime import datetime

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMPLATES = os.path.join(ROOT, "tests", "data", "chat_templates")

CONVERSATIONS = {
    "system_user_assistant_user": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": "Hi there. How can I help?"},
        {"role": "user", "content": "Tell me a joke."},
    ],
    "user": [{"role": "user", "content": "What is 2+2?"}],
    "system_user": [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Name a colour."},
    ],
    "user_assistant_user": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye"},
    ],
    "unicode_and_whitespace": [
        {"role": "user", "content": "  Grüße, 世界! \u3000emoji 🦙 \"quoted\" 'single'\n\n"},
        {"role": "assistant", "content": "\tnewline\nand\r\ntabs \u00a0"},
        {"role": "user", "content": "{{ not a template }} {% neither %}"},
    ],
    "broken_alternation": [
        {"role": "user", "content": "one"},
        {"role": "user", "content": "two"},
    ],
    "unknown_role": [{"role": "wizard", "content": "abracadabra"}],
}

# Each construct: a template and its variables (JSON).
CASES = {
    "text_only": ("plain text\nline two\n", {}),
    "output_expr": ("{{ 'a' }}{{ 1 }}{{ 1.5 }}{{ none }}{{ true }}{{ x }}|{{ missing }}|", {"x": [1, "b", None]}),
    "whitespace_minus": ("a  {{- ' b ' -}}  c\n  {%- if true -%}  d  {%- endif -%}  e", {}),
    "trim_lstrip_blocks": ("x\n    {% if true %}\n    y\n    {% endif %}\nz\n  {# c #}\nw\n", {}),
    "plus_disables_lstrip": ("x\n    {%+ if true %}y{% endif %}\n", {}),
    "comment_minus": ("a  {#- comment -#}  b", {}),
    "if_elif_else": ("{% for v in [1, 2, 3] %}{% if v == 1 %}one{% elif v == 2 %}two{% else %}many{% endif %},{% endfor %}", {}),
    "for_loop_vars": ("{% for x in 'abc' %}{{ loop.index }}{{ loop.index0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }}{{ loop.revindex }}{{ loop.revindex0 }};{% endfor %}", {}),
    "for_else": ("{% for x in [] %}x{% else %}empty{% endfor %}", {}),
    "for_filter": ("{% for x in range(10) if x % 3 == 0 %}{{ x }}{{ '' if loop.last else ',' }}{% endfor %}", {}),
    "for_items_unpack": ("{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}{% for k, v in d | items %}{{ k }}{% endfor %}", {"d": {"b": 1, "a": [2]}}),
    "for_dict_keys": ("{% for k in d %}{{ k }}{% endfor %}", {"d": {"z": 1, "y": 2}}),
    "loop_scope": ("{% set x = 0 %}{% for i in [1, 2] %}{% set x = x + i %}{{ x }}{% endfor %}|{{ x }}", {}),
    "if_scope": ("{% if true %}{% set y = 5 %}{% endif %}{{ y }}", {}),
    "namespace": ("{% set ns = namespace(n=0, s='') %}{% for i in [1, 2, 3] %}{% set ns.n = ns.n + i %}{% set ns.s = ns.s ~ i %}{% endfor %}{{ ns.n }} {{ ns.s }}", {}),
    "break_continue": ("{% for i in range(10) %}{% if i == 2 %}{% continue %}{% endif %}{% if i == 5 %}{% break %}{% endif %}{{ i }}{% endfor %}", {}),
    "macro": ("{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}{{ greet('A') }} {{ greet('B', '?') }} {{ greet(name='C', punct='.') }}", {}),
    "set_block": ("{% set x %}inner {{ 1 + 1 }}{% endset %}[{{ x }}]", {}),
    "filters_string": ("{{ '  Ab Cd  ' | trim }}|{{ 'ab' | upper }}|{{ 'AB' | lower }}|{{ 'hello wORLD-x' | title }}|{{ 'hELLO' | capitalize }}|{{ 'a-b-c' | replace('-', '+') }}|{{ 42 | string }}|{{ 'xx' | trim('x') }}", {}),
    "filters_sequence": ("{{ [3, 1, 2] | length }} {{ 'héllo' | length }} {{ d | length }} {{ [1, 2] | first }} {{ [1, 2] | last }} {{ 'abc' | list }} {{ [1, 2, 3] | join('-') }} {{ ['x', 'y'] | reverse | list }}", {"d": {"a": 1}}),
    "filter_default": ("{{ missing | default('dflt') }} {{ '' | default('e', true) }} {{ 'v' | d('w') }} {{ none | default('n') }}", {}),
    "filter_int_float": ("{{ '42' | int }} {{ 3.9 | int }} {{ 'x' | int }} {{ '2.5' | float }} {{ 7 | abs }} {{ -7 | abs }}", {}),
    "filter_selectattr": ("{{ msgs | selectattr('role', 'equalto', 'user') | map(attribute='content') | join(',') }}|{{ msgs | rejectattr('role', 'eq', 'user') | list | length }}|{{ msgs | selectattr('tool') | list | length }}", {"msgs": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "tool": 1}, {"role": "user", "content": "c"}]}),
    "filter_select_reject": ("{{ ['a', 'code', 'b'] | reject('equalto', 'code') | join(', ') }} {{ [0, 1, 2, 3] | select('odd') | list }}", {}),
    "filter_map_filter": ("{{ ['a', 'b'] | map('upper') | join }}", {}),
    "filter_indent": ("{{ 'a\nb\n\nc' | indent(2) }}|{{ 'a\nb' | indent(3, true) }}|{{ 'a\n\nb' | indent(2, blank=true) }}", {}),
    "filter_tojson": ("{{ d | tojson }}\n{{ d | tojson(indent=2) }}\n{{ [] | tojson }} {{ {} | tojson(indent=4) }} {{ 'é\"\\\\\n\u0001' | tojson }} {{ d | tojson(sort_keys=true) }} {{ 1.0 | tojson }} {{ d | tojson(separators=(',', ':')) }}", {"d": {"z": [1, 2.5, None, True], "a": {"s": "ü<>&'"}, "e": []}}),
    "filter_items_safe": ("{% for k, v in d | items %}{{ k | safe }}{{ v }}{% endfor %}", {"d": {"x": 1}}),
    "tests": ("{{ x is defined }}{{ y is undefined }}{{ n is none }}{{ s is string }}{{ d is mapping }}{{ l is iterable }}{{ s is iterable }}{{ l is sequence }}{{ 1 is number }}{{ s is number }}{{ 1 is equalto 1 }}{{ 2 is eq(3) }}{{ n is not none }}{{ 3 is odd }}{{ 4 is even }}{{ 9 is divisibleby 3 }}{{ d is not mapping }}", {"x": 1, "n": None, "s": "str", "d": {}, "l": [1]}),
    "operators_math": ("{{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ 7 / 2 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 2 ** 10 }} {{ 1.5 + 1 }} {{ 0.1 + 0.2 }} {{ 1e20 }} {{ 1e-5 }} {{ 10 / 4 }} {{ -3 }} {{ 5 - 8 }}", {}),
    "operators_string": ("{{ 'a' + 'b' }} {{ 'a' ~ 1 ~ none }} {{ 'ab' * 3 }} {{ [1] + [2] }} {{ [0] * 3 }}", {}),
    "operators_compare": ("{{ 1 < 2 }}{{ 2 <= 2 }}{{ 'a' > 'b' }}{{ 1 == 1.0 }}{{ 'a' != 'a' }}{{ [1, 2] == [1, 2] }}{{ d == {'k': 1} }}{{ true == 1 }}", {"d": {"k": 1}}),
    "operators_logic": ("{{ true and false }} {{ true or false }} {{ not true }} {{ 0 or 'x' }} {{ 'a' and 'b' }} {{ not (1 == 2) }} {{ 'a' in 'cat' }} {{ 2 in [1, 2] }} {{ 'k' in d }} {{ 'z' not in d }}", {"d": {"k": 1}}),
    "ternary": ("{{ 'y' if true else 'n' }} {{ 'y' if false else 'n' }} [{{ 'y' if false }}]", {}),
    "slicing": ("{{ l[1:] }} {{ l[:-1] }} {{ l[::2] }} {{ l[::-1] }} {{ s[1:3] }} {{ s[-2:] }} {{ 'héllo'[1:3] }} {{ l[-1] }} {{ s[0] }} {{ l[5:] }} {{ l[3:1:-1] }}", {"l": [1, 2, 3, 4], "s": "abcd"}),
    "indexing_attrs": ("{{ d['a'] }} {{ d.a }} {{ d.b.c }} {{ l[0].k }} {{ l.0.k }} {{ d.missing is defined }} {{ d['missing'] is defined }}", {"d": {"a": 1, "b": {"c": 2}}, "l": [{"k": "v"}]}),
    "string_methods": ("{{ '  x  '.strip() }}|{{ '  x  '.lstrip() }}|{{ '  x  '.rstrip() }}|{{ 'a,b,,c'.split(',') }}|{{ ' a  b '.split() }}|{{ 'abc'.startswith('ab') }}{{ 'abc'.endswith('bc') }}{{ 'abc'.startswith(('x', 'a')) }}|{{ 'Ab'.upper() }}{{ 'Ab'.lower() }}|{{ 'hello world'.title() }}|{{ 'aXbX'.replace('X', '-') }}|{{ 'xxhixx'.strip('x') }}|{{ ', '.join(['a', 'b']) }}|{{ 'a b c'.split(' ', 1) }}", {}),
    "dict_methods": ("{{ d.get('a') }} {{ d.get('z') }} {{ d.get('z', 'dflt') }} {{ d.keys() | list }} {{ d.values() | list }} {{ d.items() | list }}", {"d": {"a": 1, "b": "x"}}),
    "literals": ("{{ [1, 'two', [3], {'four': 4}] }} {{ {'a': 1, 'b': [true, none]} }} {{ (1, 2) | list }} {{ 'adj' 'acent' }} {{ \"dq\" }} {{ 'esc\\'\\n\\t' }}", {}),
    "unicode_strip": ("[{{ s | trim }}] [{{ s.strip() }}]", {"s": "\u3000\u00a0 héllo \u2003\n"}),
    "raise_exception": ("{{ raise_exception('custom refusal: ' ~ 42) }}", {}),
    "undefined_attr_error": ("{{ missing.attr }}", {}),
    "undefined_add_error": ("{{ missing + 'x' }}", {}),
    "type_error": ("{{ 'a' + 1 }}", {}),
    "not_iterable": ("{% for x in 5 %}{% endfor %}", {}),
    "set_attr_on_dict": ("{% set d = {} %}{% set d.x = 1 %}", {}),
    "generation_tag": ("a{% generation %}b{{ 1 }}{% endgeneration %}c", {}),
    "strftime": ("{{ strftime_now('%Y') | length }}", {}),
    # Shapes newer templates use (Qwen3, DeepSeek-R1, Llama-3.2): reversed walks, think-tag
    # splitting, content parts, tool-call JSON.
    "qwen3_like": ("{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}{%- for message in messages[::-1] %}{%- set index = (messages|length - 1) - loop.index0 %}{%- if ns.multi_step_tool and message.role == 'user' and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}{%- set ns.multi_step_tool = false %}{%- set ns.last_query_index = index %}{%- endif %}{%- endfor %}{{ ns.last_query_index }}|{%- for m in messages %}{%- if '</think>' in m.content %}{{ (m.content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n')) }}/{{ m.content.split('</think>')[-1].lstrip('\\n') }}{%- else %}{{ m.content }}{%- endif %};{%- endfor %}", {"messages": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "<think>\nhmm\n</think>\n\nA1"}, {"role": "user", "content": "<tool_response>r</tool_response>"}]}),
    "content_parts": ("{%- for m in messages %}{%- if m.content is string %}{{ m.content }}{%- else %}{%- for p in m.content | selectattr('type', 'equalto', 'text') %}{{ p.text }}{%- endfor %}{%- endif %}|{%- endfor %}", {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe"}]}, {"role": "user", "content": "plain"}]}),
    "tool_calls_json": ("{%- for tc in m.tool_calls %}{{ tc.function.name }}({{ tc.function.arguments | tojson }}){% if tc.id is defined %}#{{ tc.id }}{% endif %}{%- endfor %}{{ m.get('missing', {}) | length }}{{ m.tool_calls[0].function.arguments.items() | list }}", {"m": {"tool_calls": [{"function": {"name": "f", "arguments": {"x": 1, "y": "é"}}}, {"id": "c1", "function": {"name": "g", "arguments": {}}}]}}),
    "defaults_and_none": ("{{ x | default(none) is none }} {{ y | default('a', true) }} {{ (z or {}).get('k', 'dflt') }} {{ false is false }} {{ 1 is not defined }}", {"y": ""}),
    "range_forms": ("{{ range(3) | list }} {{ range(1, 4) | list }} {{ range(10, 0, -3) | list }}", {}),
}


class AssistantTracker(Extension):
    """transformers' {% generation %} tag (it marks assistant tokens; the text renders as is)."""
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def strftime_now(fmt):
    return datetime.now().strftime(fmt)


def environment():
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[AssistantTracker, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def render(env, source, variables):
    try:
        return {"text": env.from_string(source).render(**variables)}
    except Exception as e:  # Jinja's TemplateError, Python's TypeError and the like.
        return {"error": str(e)}


def special_tokens(config):
    """The special tokens transformers passes to the template: strings, or AddedToken objects."""
    out = {}
    for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
        value = config.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            out[key] = value
    return out


def chat_goldens(env):
    out = {}
    for family in sorted(os.listdir(TEMPLATES)):
        path = os.path.join(TEMPLATES, family, "tokenizer_config.json")
        if not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
        source = config["chat_template"]
        for conv_name, messages in CONVERSATIONS.items():
            for gen in (False, True):
                variables = dict(messages=messages, tools=None, documents=None,
                                 add_generation_prompt=gen, **special_tokens(config))
                key = f"{family}/{conv_name}/{'gen' if gen else 'nogen'}"
                out[key] = render(env, source, variables)
    return {"conversations": CONVERSATIONS, "renders": out}


def jinja_goldens(env):
    out = {}
    for name, (source, variables) in CASES.items():
        result = render(env, source, variables)
        if name == "strftime":
            assert result == {"text": "4"}, result
        out[name] = dict(template=source, variables=variables, **result)
    return out


def main():
    check = "--check" in sys.argv[1:]
    env = environment()
    files = {
        os.path.join(TEMPLATES, "goldens.json"): chat_goldens(env),
        os.path.join(ROOT, "tests", "data", "jinja_goldens.json"): jinja_goldens(env),
    }
    stale = []
    for path, data in files.items():
        text = json.dumps(data, ensure_ascii=False, indent=1) + "\n"
        if check:
            with open(path, encoding="utf-8") as f:
                if f.read() != text:
                    stale.append(path)
        else:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
    if stale:
        print("out of date (run tests/make_chat_goldens.py):", *stale, sep="\n  ")
        return 1
    print("jinja2", jinja2.__version__, "checked" if check else "wrote", *files, sep="\n  ")
    return 0


if __name__ == "__main__":
    sys.exit(main())
