#!/bin/sh
# Chat templates rendered by moe-run --chat --print-prompt against Jinja2 itself
# (tests/chat_template.py: the real Qwen3, DeepSeek-V3, gpt-oss, GLM-4.6 and Qwen3.5
# templates, the built-in Mixtral one, one small template per Jinja feature); broken
# templates refused.
. "$TESTS_DIR/lib.sh"
: "${MOE_RUN:?run through make check}" "${TOKENIZER_DATA:?run through make check}"
check "templates render as Jinja2 renders them" py "$TESTS_DIR/chat_template.py" "$MOE_RUN" "$TOKENIZER_DATA" "$WORK"
cat "$WORK/out"
TOK="$TOKENIZER_DATA/mistral-spm/tokenizer.json"
printf '{%% for m in messages %%}{{ m.content }}' >"$WORK/unclosed.jinja"
expect_error "unclosed for" "line 1: 'for' without 'endfor'" "$MOE_RUN" --chat --print-prompt --tokenizer "$TOK" --chat-template "$WORK/unclosed.jinja" -p hi
printf '{%% call f() %%}x{%% endcall %%}' >"$WORK/call.jinja"
expect_error "unsupported tag" "unsupported tag 'call'" "$MOE_RUN" --chat --print-prompt --tokenizer "$TOK" --chat-template "$WORK/call.jinja" -p hi
printf '{%% macro one(a) %%}{{ a }}{%% endmacro %%}\n{{ one(1, 2) }}' >"$WORK/args.jinja"
expect_error "macro: too many arguments" "line 2: macro one takes 1 arguments" "$MOE_RUN" --chat --print-prompt --tokenizer "$TOK" --chat-template "$WORK/args.jinja" -p hi
printf '{%% macro one(a) %%}{{ a }}{%% endmacro %%}{{ one(b=2) }}' >"$WORK/kwarg.jinja"
expect_error "macro: unknown argument" "macro one has no argument b" "$MOE_RUN" --chat --print-prompt --tokenizer "$TOK" --chat-template "$WORK/kwarg.jinja" -p hi
printf '{%% macro f() %%}x' >"$WORK/unclosed-macro.jinja"
expect_error "macro without endmacro" "'macro' without 'endmacro'" "$MOE_RUN" --chat --print-prompt --tokenizer "$TOK" --chat-template "$WORK/unclosed-macro.jinja" -p hi
printf 'a\n{{ messages[0].content + 1 }}' >"$WORK/type.jinja"
expect_error "type error" "line 2: unsupported operand" "$MOE_RUN" --chat --print-prompt --tokenizer "$TOK" --chat-template "$WORK/type.jinja" -p hi
printf '{{ "unterminated }}' >"$WORK/str.jinja"
expect_error "unterminated string" "unterminated string" "$MOE_RUN" --chat --print-prompt --tokenizer "$TOK" --chat-template "$WORK/str.jinja" -p hi
printf '[{"content": "no role"}]' >"$WORK/msgs.json"
expect_error "message without a role" "no \"role\"" "$MOE_RUN" --chat --print-prompt --tokenizer "$TOK" --chat-template chatml --messages "$WORK/msgs.json"
expect_error "no template" "no chat template" "$MOE_RUN" --chat --print-prompt --tokenizer "$TOK" -p hi
expect_error "missing template file" "no-such.jinja" "$MOE_RUN" --chat --print-prompt --tokenizer "$TOK" --chat-template "$WORK/no-such.jinja" -p hi
expect_error "bad kwargs" "not a JSON object" "$MOE_RUN" --chat --print-prompt --tokenizer "$TOK" --chat-template chatml --chat-template-kwargs '[1' -p hi
# a macro that outlives the loop it was defined in (kept through a namespace) still
# sees that loop's scope (its frame is gone: the scope is kept in the render's arena)
printf '{%% set ns = namespace(f=none) %%}{%% for i in [1, 2] %%}{%% macro g() %%}<{{ i }}>{%% endmacro %%}{%% set ns.f = g %%}{%% endfor %%}{{ ns.f() }}' >"$WORK/escape.jinja"
check "a macro called after its loop" sh -c "'$MOE_RUN' --chat --print-prompt --tokenizer '$TOK' --chat-template '$WORK/escape.jinja' -p hi | grep -qx '<2>'"
# hostile templates: bounded depth, memory, time and integers, errors naming the line
hostile() { # hostile NAME 'words' PYTHON-EXPRESSION-FOR-THE-TEMPLATE
	py -c "import sys; open(sys.argv[1], 'w').write($3)" "$WORK/$1.jinja"
	expect_error "template: $1" "$2" "$MOE_RUN" --chat --print-prompt --tokenizer "$TOK" --chat-template "$WORK/$1.jinja" -p hi
}
hostile brackets "line 2: nested more than 200 deep" "'\\n{{ ' + '(' * 100000 + '1' + ')' * 100000 + ' }}'"
hostile plus-chain "line 1: nested more than 200 deep" "'{{ 1' + ' + 1' * 100000 + ' }}'"
hostile not-chain "nested more than 200 deep" "'{{ ' + 'not ' * 100000 + '1 }}'"
hostile if-blocks "nested more than 200 deep" "'{% if true %}' * 100000"
hostile lists "nested more than 200 deep" "'{{ ' + '[' * 100000 + ']' * 100000 + ' }}'"
hostile recursion "nested more than 200 deep" "'{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}'"
hostile deep-value "nested more than 200 deep" "'{% set ns = namespace(x=1) %}{% for i in range(1000) %}{% set ns.x = [ns.x] %}{% endfor %}{{ ns.x }}'"
hostile floordiv "line 1: -9223372036854775808 // -1 does not fit in 64 bits" "'{{ (-9223372036854775807 - 1) // -1 }}'"
hostile overflow "9223372036854775807 + 1 does not fit in 64 bits" "'{{ 9223372036854775807 + 1 }}'"
hostile power "2 .. 64 does not fit in 64 bits" "'{{ 2 ** 64 }}'"
hostile negate "does not fit in 64 bits" "'{{ -(-9223372036854775807 - 1) }}'"
hostile literal "integer 99999999999999999999 does not fit in 64 bits" "'{{ 99999999999999999999 }}'"
hostile int-filter "int(1e+300) does not fit in 64 bits" "'{{ (10.0 ** 300)|int }}'"
hostile big-range "range of more than" "'{{ range(10 ** 8)|length }}'"
hostile repeat "repeated 1000000000 times" "'{{ \"ab\" * 10 ** 9 }}'"
hostile long-loops "needs more than 64 MB" "'{% for i in range(3000) %}{% for j in range(3000) %}{% endfor %}{% endfor %}'"
hostile many-steps "more than 10000000 steps" "'{% for i in range(90000) %}{% if ' + ' and '.join(['1'] * 200) + ' %}{% endif %}{% endfor %}'"
hostile tojson-indent "tojson indent 1000000000: 0..64" "'{{ [1]|tojson(indent=10 ** 9) }}'"
expect_error "chat options without --chat" "go with --chat" "$MOE_RUN" --print-prompt --tokenizer "$TOK" -p hi
finish
