#!/bin/sh
# Chat templates rendered by moe-run --chat --print-prompt against Jinja2 itself
# (tests/chat_template.py: the real Qwen3 and DeepSeek-V3 templates, the built-in
# Mixtral one, one small template per Jinja feature); broken templates refused.
. "$TESTS_DIR/lib.sh"
: "${MOE_RUN:?run through make check}" "${TOKENIZER_DATA:?run through make check}"
check "templates render as Jinja2 renders them" py "$TESTS_DIR/chat_template.py" "$MOE_RUN" "$TOKENIZER_DATA" "$WORK"
cat "$WORK/out"
TOK="$TOKENIZER_DATA/mistral-spm/tokenizer.json"
printf '{%% for m in messages %%}{{ m.content }}' >"$WORK/unclosed.jinja"
expect_error "unclosed for" "line 1: 'for' without 'endfor'" "$MOE_RUN" --chat --print-prompt --tokenizer "$TOK" --chat-template "$WORK/unclosed.jinja" -p hi
printf '{%% macro f() %%}x{%% endmacro %%}' >"$WORK/macro.jinja"
expect_error "unsupported tag" "unsupported tag 'macro'" "$MOE_RUN" --chat --print-prompt --tokenizer "$TOK" --chat-template "$WORK/macro.jinja" -p hi
printf 'a\n{{ messages[0].content + 1 }}' >"$WORK/type.jinja"
expect_error "type error" "line 2: unsupported operand" "$MOE_RUN" --chat --print-prompt --tokenizer "$TOK" --chat-template "$WORK/type.jinja" -p hi
printf '{{ "unterminated }}' >"$WORK/str.jinja"
expect_error "unterminated string" "unterminated string" "$MOE_RUN" --chat --print-prompt --tokenizer "$TOK" --chat-template "$WORK/str.jinja" -p hi
printf '[{"content": "no role"}]' >"$WORK/msgs.json"
expect_error "message without a role" "no \"role\"" "$MOE_RUN" --chat --print-prompt --tokenizer "$TOK" --chat-template chatml --messages "$WORK/msgs.json"
expect_error "no template" "no chat template" "$MOE_RUN" --chat --print-prompt --tokenizer "$TOK" -p hi
expect_error "missing template file" "no-such.jinja" "$MOE_RUN" --chat --print-prompt --tokenizer "$TOK" --chat-template "$WORK/no-such.jinja" -p hi
expect_error "bad kwargs" "not a JSON object" "$MOE_RUN" --chat --print-prompt --tokenizer "$TOK" --chat-template chatml --chat-template-kwargs '[1' -p hi
expect_error "chat options without --chat" "go with --chat" "$MOE_RUN" --print-prompt --tokenizer "$TOK" -p hi
finish
