#!/bin/sh
# Text in, text out: a Mixtral-shaped model packed from a Hugging Face folder that
# carries the real Mistral v1 tokenizer. The streamed text equals the decode of the
# ids the same run makes from --tokens; --stop cuts before the stop string; an
# eos_token_id from generation_config.json ends generation; --chat uses Mixtral's
# own template when the files carry none; bad prompts are refused.
. "$TESTS_DIR/lib.sh"
: "${MOE_RUN:?run through make check}" "${TOKENIZER_DATA:?run through make check}"
T="$TOKENIZER_DATA/mistral-spm"
M="$WORK/model"
check "synth folder" "$MOE_PACK" synth --format safetensors --hidden 64 --vocab 32000 "$M"
cp "$T/tokenizer.json" "$T/tokenizer_config.json" "$M/"
check "pack with tokenizer" "$MOE_PACK" "$M" "$WORK/a.moe"

ids=$("$MOE_RUN" -m "$WORK/a.moe" --tokenize -p "Hello world")
check "prompt ids" [ "$ids" = "[1, 22557, 1526]" ]
"$MOE_RUN" -m "$WORK/a.moe" --tokens 1,22557,1526 -n 12 --ignore-eos >"$WORK/ids" 2>"$WORK/err"
gen=$(tr ' ' ',' <"$WORK/ids")
"$MOE_RUN" -m "$WORK/a.moe" --detokenize --skip-special -p "[$gen]" >"$WORK/want"
"$MOE_RUN" -m "$WORK/a.moe" -p "Hello world" -n 12 --ignore-eos >"$WORK/text" 2>"$WORK/err"
check "streamed text = decode of the generated ids" cmp "$WORK/text" "$WORK/want"
printf 'Hello world' | "$MOE_RUN" -m "$WORK/a.moe" -n 12 --ignore-eos >"$WORK/stdin_text" 2>"$WORK/err"
check "prompt from stdin" cmp "$WORK/stdin_text" "$WORK/want"

# --stop: a piece from the middle of that text; output stops right before it
stop=$(py -c 'import sys; t = open(sys.argv[1], encoding="utf-8").read(); print(t[len(t) // 2:len(t) // 2 + 3], end="")' "$WORK/want")
"$MOE_RUN" -m "$WORK/a.moe" -p "Hello world" -n 12 --ignore-eos --stop "$stop" --stats-json "$WORK/s.json" >"$WORK/stopped" 2>"$WORK/err"
check "--stop" py -c '
import json, sys
want, got, stop, stats = sys.argv[1:5]
w = open(want, encoding="utf-8").read(); g = open(got, encoding="utf-8").read()
assert g == w[:w.index(stop)], (g, w, stop)
assert json.load(open(stats))["stop_reason"] == "stop"' "$WORK/want" "$WORK/stopped" "$stop" "$WORK/s.json"

# eos_token_id (generation_config.json) = the second generated id: one token of text, then stop
second=$(cut -d' ' -f2 "$WORK/ids")
first=$(cut -d' ' -f1 "$WORK/ids")
printf '{"eos_token_id": [2, %s]}' "$second" >"$M/generation_config.json"
check "pack with generation_config.json" "$MOE_PACK" "$M" "$WORK/b.moe"
"$MOE_RUN" -m "$WORK/b.moe" -p "Hello world" -n 12 --stats-json "$WORK/e.json" >"$WORK/eos_text" 2>"$WORK/err"
"$MOE_RUN" -m "$WORK/b.moe" --detokenize --skip-special -p "[$first]" >"$WORK/eos_want"
check "stops at eos" cmp "$WORK/eos_text" "$WORK/eos_want"
check "stop reason eos" py -c 'import json, sys; s = json.load(open(sys.argv[1])); assert s["stop_reason"] == "eos" and s["generated_tokens"] == 2, s' "$WORK/e.json"
"$MOE_RUN" -m "$WORK/b.moe" --tokens 1,22557,1526 -n 12 >"$WORK/eos_ids" 2>"$WORK/err"
check "--tokens stops at eos too" [ "$(cat "$WORK/eos_ids")" = "$first" ]

# --chat: no template in these files, so Mixtral Instruct's own
check "--chat with the built-in template" [ "$("$MOE_RUN" -m "$WORK/a.moe" --chat --print-prompt -p hi)" = "<s>[INST] hi [/INST]" ]
check "--chat generates" "$MOE_RUN" -m "$WORK/a.moe" --chat -p hi -n 4

# refused
check "pack without tokenizer" "$MOE_PACK" synth --hidden 64 "$WORK/bare.moe"
expect_error "text prompt, no tokenizer" "no tokenizer" "$MOE_RUN" -m "$WORK/bare.moe" -p hi
expect_error "empty prompt" "empty prompt" "$MOE_RUN" -m "$WORK/a.moe" --no-add-special -p ""
expect_error "--stop empty" "--stop" "$MOE_RUN" -m "$WORK/a.moe" -p hi --stop ""
finish
