#!/bin/sh
# Standard output that cannot be written (/dev/full) is an error: status 1 and one
# line saying so, from every tool; a reader that leaves early (| head) ends moe-run
# quietly, whether SIGPIPE kills it or, ignored, the write fails with EPIPE (then it
# stops generating at once).
. "$TESTS_DIR/lib.sh"
: "${MOE_RUN:?run through make check}" "${MOE_BENCH:?run through make check}"
cd "$WORK"
[ -w /dev/full ] || { echo "no /dev/full"; exit 77; }
check "synth" "$MOE_PACK" synth --layers 2 --hidden 64 --expert-ff 128 --vocab 128 m.moe
check "demo pack" "$MOE_PACK" "$DEMO_MODEL" kjv.moe
full() { # full DESCRIPTION COMMAND...: status 1, one line on stderr
	d=$1
	shift
	"$@" >/dev/full 2>full.err
	st=$?
	if [ "$st" -eq 1 ] && [ "$(grep -c . full.err)" -eq 1 ] && grep -q 'standard output: No space left on device' full.err; then
		ok
	else
		not_ok "$d > /dev/full: status $st"
		cat full.err >&2
	fi
}
full "moe-run ids" "$MOE_RUN" -m m.moe --tokens 1,2 -n 5
full "moe-run text" "$MOE_RUN" -m kjv.moe -p And -n 50
full "moe-run --tokenize" "$MOE_RUN" --tokenize -m kjv.moe -p 'And God said'
full "moe-run --perplexity" "$MOE_RUN" -m kjv.moe --perplexity "$DEMO_MODEL/heldout.txt" -c 64 -b 64
full "moe-pack --info" "$MOE_PACK" --info m.moe
full "moe-pack --info --json" "$MOE_PACK" --info --json m.moe
full "moe-pack --verify" "$MOE_PACK" --verify m.moe
full "moe-pack synth --list-presets" "$MOE_PACK" synth --list-presets
full "moe-pack --help" "$MOE_PACK" --help
full "moe-bench membw" "$MOE_BENCH" membw --memory 64M --reps 1
# | head -c 1: killed by SIGPIPE, or (SIGPIPE ignored) stopped by EPIPE; quiet either way
("$MOE_RUN" -m kjv.moe -p And -n 300 2>pipe.err; echo $? >pipe.st) | head -c 1 >/dev/null
check "moe-run | head: nothing on stderr" [ ! -s pipe.err ]
check "... ended by SIGPIPE" [ "$(cat pipe.st)" -eq 141 ]
(trap '' PIPE; "$MOE_RUN" -m kjv.moe -p And -n 300 --stats-json s.json 2>pipe.err; echo $? >pipe.st) | head -c 1 >/dev/null
check "SIGPIPE ignored: nothing on stderr" [ ! -s pipe.err ]
check "... status 0" [ "$(cat pipe.st)" -eq 0 ]
check "... generation stopped at the closed pipe" py -c '
import json, sys
s = json.load(open("s.json"))
assert s["stop_reason"] == "output" and s["generated_tokens"] < 50, (s["stop_reason"], s["generated_tokens"])'
finish
