#!/bin/sh
# Ctrl-C and SIGTERM: moe-pack stops within a tensor or expert and removes what it
# was writing (a pack's temporary file, a GGUF's, a safetensors folder's), exiting
# 128 + the signal; moe-run stops before the next token and still writes its text,
# statistics, a complete stats-json (stop_reason "interrupted") and a trace of whole
# lines.
. "$TESTS_DIR/lib.sh"
: "${MOE_RUN:?run through make check}"
cd "$WORK"
# interrupt CMD... after a second: its exit status
interrupt() {
	sig=$1
	shift
	"$@" >run.out 2>run.err &
	pid=$!
	sleep 1
	kill -"$sig" $pid
	wait $pid
}
big="synth --preset mixtral-8x7b --layers 1" # several seconds of work
interrupt INT "$MOE_PACK" $big -q q4 p.moe
st=$?
check "moe-pack, SIGINT: exit 130 (was $st)" [ $st -eq 130 ]
check "... says so" grep -q "moe-pack: interrupted" run.err
no_output "... leaves no pack or temporary file" p.moe
interrupt TERM "$MOE_PACK" $big --format safetensors st
st=$?
check "moe-pack synth safetensors, SIGTERM: exit 143 (was $st)" [ $st -eq 143 ]
no_output "... leaves no folder or temporary folder" st
interrupt INT "$MOE_PACK" $big --format gguf g.gguf
check "moe-pack synth gguf, SIGINT: exit 130" [ $? -eq 130 ]
no_output "... leaves no GGUF or temporary file" g.gguf

check "a small pack" "$MOE_PACK" synth --layers 2 --hidden 128 --expert-ff 256 --vocab 256 m.moe
interrupt INT "$MOE_RUN" -m m.moe --tokens 1,2,3 -n -1 -c 32768 --ram-budget 1G --stats --stats-json s.json \
	--trace-out t.jsonl
st=$?
check "moe-run, SIGINT: exit 130 (was $st)" [ $st -eq 130 ]
check "... the statistics are printed" grep -q "moe-run: experts:" run.err
check "... stats-json is whole and says interrupted, fewer tokens than asked" py -c '
import json, sys
d = json.load(open("s.json"))
assert d["stop_reason"] == "interrupted", d["stop_reason"]
assert 0 < d["generated_tokens"] < 32765, d["generated_tokens"]'
check "... the trace ends on a whole line, every line JSON" py -c '
import json
text = open("t.jsonl").read()
assert text.endswith("\n")
[json.loads(l) for l in text.splitlines()]'
check "... the ids printed end on a line" sh -c '[ "$(tail -c 1 run.out | od -An -c | tr -d " ")" = "\\n" ]'
finish
