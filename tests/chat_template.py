"""Chat templates: moe-run --chat --print-prompt against Jinja2 itself, set up the
way transformers' apply_chat_template sets it up (trim_blocks, lstrip_blocks,
raise_exception, strftime_now, a tojson that is json.dumps(ensure_ascii=False)).

Usage: chat_template.py MOE_RUN TOKENIZER_DATA WORKDIR
Checks the real templates of Qwen3 and DeepSeek-V3 (their tokenizer_config.json), of
gpt-oss (harmony), GLM-4.6 and Qwen3.5 (tests/templates: macros, tool schemas,
reasoning), the built-in Mixtral Instruct v0.1 template against the text published
with that model, and small templates for each Jinja feature the interpreter claims."""
import json
import os
import subprocess
import sys
from datetime import datetime

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

run, data, work = sys.argv[1:4]

# Mixtral-8x7B-Instruct-v0.1's tokenizer_config.json chat_template, as published
MIXTRAL_V01 = ("{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
               "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
               "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
               "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}"
               "{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}")


class TemplateError(Exception):
    pass


def raise_exception(msg):
    raise TemplateError(msg)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def reference(template, messages, bos, eos, kwargs):
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda f: datetime.now().strftime(f)
    try:
        return env.from_string(template).render(messages=messages, add_generation_prompt=True, bos_token=bos,
                                                eos_token=eos, **kwargs)
    except TemplateError as e:
        return TemplateError(str(e))


def ours(args, messages, kwargs):
    path = os.path.join(work, "messages.json")
    with open(path, "w") as f:
        json.dump(messages, f, ensure_ascii=False)
    cmd = [run, "--chat", "--print-prompt", "--messages", path, *args]
    if kwargs:
        cmd += ["--chat-template-kwargs", json.dumps(kwargs)]
    r = subprocess.run(cmd, capture_output=True)
    if r.returncode != 0:
        return TemplateError(r.stderr.decode().strip())
    return r.stdout.decode()


bad = total = 0


def compare(name, args, template, messages, bos, eos, kwargs=None):
    global bad, total
    total += 1
    want = reference(template, messages, bos, eos, kwargs or {})
    got = ours(args, messages, kwargs)
    if isinstance(want, TemplateError):
        ok = isinstance(got, TemplateError) and str(want) in str(got)
    else:
        ok = got == want
    if not ok:
        bad += 1
        print("MISMATCH %s\n  got  %r\n  want %r" % (name, got, want))


user = {"role": "user", "content": "What is 2+2?"}
system = {"role": "system", "content": "You are terse.\nAnswer in one line."}
conversations = {
    "user": [user],
    "system+user": [system, user],
    "multi-turn": [system, user, {"role": "assistant", "content": "4."}, {"role": "user", "content": "And 3+3? \"quote\" ü 中文"}],
    "thinking history": [user, {"role": "assistant", "content": "<think>\nadd them\n</think>\n\n4."},
                         {"role": "user", "content": "Sure?"}],
    "two systems": [system, {"role": "system", "content": "Second."}, user],
}
qwen_tools = [{"type": "function", "function": {"name": "add", "description": "Add numbers",
               "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}}}}]
qwen_tool_turns = [user,
                   {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 2}}}]},
                   {"role": "tool", "content": "4"}, {"role": "tool", "content": "ok"}]
deepseek_tool_turns = [user,
                       {"role": "assistant", "content": None, "tool_calls": [
                           {"type": "function", "function": {"name": "add", "arguments": "{\"a\": 2, \"b\": 2}"}},
                           {"type": "function", "function": {"name": "mul", "arguments": "{\"a\": 2, \"b\": 2}"}}]},
                       {"role": "tool", "content": "4"}, {"role": "tool", "content": "4"},
                       {"role": "assistant", "content": "Both give 4."}]

for family in ["qwen3", "deepseek-v3"]:
    tok = os.path.join(data, family, "tokenizer.json")
    cfg = json.load(open(os.path.join(data, family, "tokenizer_config.json")))
    tmpl = cfg["chat_template"]
    tok_str = lambda v: v if isinstance(v, str) or v is None else v["content"]
    bos, eos = tok_str(cfg.get("bos_token")) or "", tok_str(cfg.get("eos_token")) or ""
    for name, msgs in conversations.items():
        compare(family + " " + name, ["--tokenizer", tok], tmpl, msgs, bos, eos)
    if family == "qwen3":
        compare("qwen3 no thinking", ["--tokenizer", tok], tmpl, [system, user], bos, eos, {"enable_thinking": False})
        compare("qwen3 tools", ["--tokenizer", tok], tmpl, qwen_tool_turns, bos, eos, {"tools": qwen_tools})
    else:
        compare("deepseek tool calls", ["--tokenizer", tok], tmpl, deepseek_tool_turns, bos, eos)

# the newer families' templates, as their models publish them (tests/templates/README.md)
templates = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
qwen_tok = ["--tokenizer", os.path.join(data, "qwen3", "tokenizer.json")]
gpt_oss_turns = [{"role": "developer", "content": "Answer briefly."}, user,
                 {"role": "assistant", "thinking": "The user adds.", "tool_calls": [
                     {"type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 2}}}]},
                 {"role": "tool", "content": "4"}, {"role": "assistant", "thinking": "Done.", "content": "4"},
                 {"role": "user", "content": "Thanks"}]
for name, extra in [("gpt-oss", [("reasoning high", gpt_oss_turns, {"reasoning_effort": "high", "tools": qwen_tools})]),
                    ("glm-4.6", [("no thinking", [system, user], {"enable_thinking": False})]),
                    ("qwen3.5", [("no thinking", [system, user], {"enable_thinking": False})])]:
    path = os.path.join(templates, name + ".jinja")
    tmpl = open(path).read()
    args = qwen_tok + ["--chat-template", path]
    for cname, msgs in conversations.items():
        compare(name + " " + cname, args, tmpl, msgs, "<s>", "</s>")
    compare(name + " tools", args, tmpl, qwen_tool_turns, "<s>", "</s>", {"tools": qwen_tools})
    for cname, msgs, kwargs in extra:
        compare(name + " " + cname, args, tmpl, msgs, "<s>", "</s>", kwargs)

# Mistral v1 files carry no template: the built-in one must be Mixtral's own
mistral = ["--tokenizer", os.path.join(data, "mistral-spm", "tokenizer.json")]
for name, msgs in [("user", [user]), ("multi-turn", conversations["multi-turn"][1:]),
                   ("system refused", [system, user]), ("roles not alternating", [user, user])]:
    compare("mistral-v1 " + name, mistral + ["--chat-template", "mistral-v1"], MIXTRAL_V01, msgs, "<s>", "</s>")

# one small template per feature, rendered both ways
features = {
    "whitespace control": "a  {{- ' b ' -}}  c\n  {%- if true %} d {% endif -%}\n e",
    "trim and lstrip blocks": "x\n    {% if true %}\n    y\n    {% endif %}\nz\n{# comment #}\nw",
    "plus keeps lstrip": "x\n    {%+ if true %}y{% endif %}",
    "loop vars": "{% for m in messages %}{{ loop.index }}/{{ loop.index0 }}/{{ loop.revindex }}/{{ loop.first }}/{{ loop.last }}/{{ loop.length }};{% endfor %}",
    "loop filter and else": "{% for m in messages if m.role == 'user' %}{{ m.content }}{% else %}none{% endfor %}{% for x in [] %}{% else %}empty{% endfor %}",
    "tuple unpacking": "{% for k, v in {'a': 1, 'b': [2, 3]}.items() %}{{ k }}={{ v }} {% endfor %}",
    "slices": "{{ [1,2,3,4,5][::-1] }} {{ [1,2,3,4,5][1:3] }} {{ 'hello'[1:-1] }} {{ [1,2,3][-1] }} {{ [1,2,3,4,5][::2] }}",
    "string methods": "{{ '  a b  '.strip() }}|{{ 'xxaxx'.lstrip('x') }}|{{ 'a,b,,c'.split(',') }}|{{ ' a  b '.split() }}|"
                      "{{ 'Hi'.upper() }}{{ 'Hi'.lower() }}|{{ 'abc'.startswith('ab') }}{{ 'abc'.endswith('bc') }}|"
                      "{{ 'a-b'.replace('-', '+') }}|{{ 'hello world'.title() }}|{{ '-'.join(['a','b']) }}",
    "filters": "{{ messages|length }} {{ 'ab'|upper }} {{ '  x '|trim }} {{ [3,1]|first }} {{ [3,1]|last }} "
               "{{ ['a','b']|join(', ') }} {{ undefined_var|default('dflt') }} {{ [1,2]|reverse|list }} {{ 42|string }}",
    "tojson": "{{ {'a': [1, 2.5, true, none], 'b': 'q\"\\n\u00e9'}|tojson }} {{ [1, {'x': 1}]|tojson(indent=2) }}",
    "tests": "{{ x is defined }}{{ y is defined }}{{ none is none }}{{ 'a' is string }}{{ 1 is number }}"
             "{{ {} is mapping }}{{ 2 is even }}{{ 3 is odd }}{{ x is not none }}{{ false is false }}",
    "operators": "{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 2 ** 10 }} {{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} "
                 "{{ 'a' ~ 1 ~ none }} {{ 'ab' in 'cabd' }} {{ 3 not in [1, 2] }} {{ 1 < 2 and 2 <= 2 }} {{ not 0 or 'z' }} "
                 "{{ 'a' * 3 }} {{ [1] + [2] }} {{ 7 / 2 }}",
    "conditional expr": "{{ 'yes' if x > 1 else 'no' }} {{ 'yes' if x < 1 else 'no' }}",
    "namespace": "{% set ns = namespace(n=0, s='') %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% set ns.s = ns.s + m.role[0] %}{% endfor %}{{ ns.n }}{{ ns.s }}",
    "set scoping": "{% set a = 1 %}{% for m in messages %}{% set a = 2 %}{% endfor %}{{ a }}",
    "elif chain": "{% for v in [1, 2, 3] %}{% if v == 1 %}one{% elif v == 2 %}two{% else %}many{% endif %} {% endfor %}",
    "dict access": "{{ messages[0]['role'] }} {{ messages[0].content }} {{ {'k': 'v'}.get('k') }} {{ {'k': 'v'}.get('z', 'd') }} "
                   "{{ {'a': 1}.keys()|list }} {{ messages[0].missing is defined }}",
    "range": "{% for i in range(3) %}{{ i }}{% endfor %} {% for i in range(1, 7, 2) %}{{ i }}{% endfor %}",
    "raise": "{% if x > 0 %}{{ raise_exception('x must not be positive') }}{% endif %}",
    "nested loops": "{% for a in [1, 2] %}{% for b in ['x', 'y'] %}{{ loop.index }}{{ a }}{{ b }} {% endfor %}{{ loop.index }} {% endfor %}",
    "integers as Python's": "{{ 7 // -2 }} {{ -7 % -3 }} {{ 7 % -3 }} {{ (-9223372036854775807 - 1) // 1 }} "
                            "{{ (-9223372036854775807 - 1) % -1 }} {{ 2 ** 62 }} {{ 2 ** 3 ** 2 }} {{ 2 ** -1 }} "
                            "{{ 1.9|int }} {{ -1.9|int }} {{ '42'|int }} {{ 'x'|int }} {{ 9007199254740993 == 9007199254740992 }} "
                            "{{ range(-5, 5, 3)|list }} {{ range(5, -5, -3)|list }} {{ 'abcdef'[::2] }} {{ 'abcdef'[::-2] }} "
                            "{{ [1, 2, 3][-1:] }} {{ 'ab' * 0 }} {{ 'ab' * -3 }}",
    "escapes": "{{ 'tab\\there' }} {{ \"dq 'sq'\" }} {{ 'it\\'s' }}",
    "macros": "{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% set local = 1 %}{% endmacro %}"
              "{{ greet('a') }} {{ greet('b', punct='?') }} {{ greet(punct='.', name='c') }} {{ local is defined }} "
              "{% macro down(n) %}{{ n }}{% if n > 0 %}{{ down(n - 1) }}{% endif %}{% endmacro %}{{ down(3) }} "
              "{% macro sees(y) %}{{ x }}{{ y }}{{ z }}{% endmacro %}{{ sees(5) }}",
}
for name, tmpl in features.items():
    path = os.path.join(work, "feature.jinja")
    with open(path, "w") as f:
        f.write(tmpl)
    compare("feature " + name, mistral + ["--chat-template", path], tmpl, [system, user], "<s>", "</s>", {"x": 2})

print("chat templates: %d of %d rendered exactly as Jinja2 renders them" % (total - bad, total))
sys.exit(1 if bad else 0)
