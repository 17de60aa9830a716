#!/bin/sh
# A pack that changes under a running moe-run. moe-pack --force renames a whole new
# file over the old one, so the run goes on with the old file to the same output as
# an undisturbed run. A pack truncated in place by someone else ends the run with a
# one-line error and status 1, never a crash by SIGBUS, whichever way its bytes come
# (mapped dense weights, the expert cache's reads, or all mapped with --no-offload);
# so do moe-pack --verify and --info.
. "$TESTS_DIR/lib.sh"
: "${MOE_RUN:?run through make check}"
cd "$WORK"
SYNTH="synth --layers 2 --hidden 256 --expert-ff 512 --vocab 512"
check "synth" "$MOE_PACK" $SYNTH p.moe
# replaced: the reference run first, then the same run with the pack replaced under it
RUN="$MOE_RUN -m p.moe --tokens 1,2 -n 3000 --context-shift -c 64 --kv-type f32"
check "reference run" sh -c "$RUN > ref.txt"
$RUN > during.txt 2> during.err &
pid=$!
sleep 0.5
check "moe-pack --force replaces the pack in use" "$MOE_PACK" $SYNTH --seed 9 --force p.moe
wait $pid
check "... the run goes on with the old file: status 0" [ $? -eq 0 ]
check "... and the same output as undisturbed" cmp ref.txt during.txt
# truncated in place, while each way of reading it is in use (-n -1 with a context
# shift runs until stopped; timeout is the test's own guard)
truncated() { # truncated DESCRIPTION OPTIONS...
	d=$1
	shift
	cp p.moe t.moe
	timeout 120 "$MOE_RUN" -m t.moe --tokens 1,2 -n -1 --context-shift -c 64 "$@" > /dev/null 2> t.err &
	pid=$!
	sleep 0.5
	truncate -s 8192 t.moe
	wait $pid
	st=$?
	if [ "$st" -eq 1 ] && [ "$(grep -c . t.err)" -eq 1 ] && grep -q 't.moe' t.err; then
		ok
	else
		not_ok "$d: status $st"
		cat t.err >&2
	fi
}
truncated "truncated under --no-offload (all mapped)" --no-offload
truncated "truncated under the expert cache" --ram-budget 3M
truncated "truncated under the expert cache, experts all cached" --ram-budget 64M
check "... the message says what happened" grep -q 'the file was truncated or changed while in use\|truncated\|short read\|past the end' t.err
finish
