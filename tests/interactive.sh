#!/bin/sh
# moe-run -i: a three-turn conversation on one session, each reply the one
# moe-run --chat gives for the whole conversation so far (so the history kept in
# the KV cache is the conversation), /reset, /stats, and Ctrl-C stopping a reply
# without ending the conversation.
. "$TESTS_DIR/lib.sh"
: "${MOE_RUN:?run through make check}" "${DEMO_MODEL:?}"
cd "$WORK"
# f32: a token computed in a decode step and in a prefill agree to rounding, so
# greedy choices are the same whichever way the history was computed
"$MOE_PACK" -q f32 "$DEMO_MODEL" kjv.moe >/dev/null 2>&1
check "the demo model packs" [ -f kjv.moe ]
run() { "$MOE_RUN" -m kjv.moe -n 24 -c 512 "$@"; }
u1='Who made the heaven and the earth?' u2='And what did he make on the third day?' u3='Who was Moses?'
r1=$(run --chat -p "$u1"; printf x) && r1=${r1%x}
msgs() { py -c 'import json, sys; a = sys.argv[1:]; print(json.dumps([{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(a)]))' "$@"; }
msgs "$u1" "$r1" "$u2" >m2.json
r2=$(run --chat --messages m2.json; printf x) && r2=${r2%x}
msgs "$u1" "$r1" "$u2" "$r2" "$u3" >m3.json
r3=$(run --chat --messages m3.json; printf x) && r3=${r3%x}
printf '%s\n%s\n%s\n' "$u1" "$u2" "$u3" | run -i --stats >conv.txt 2>conv.err
check "three turns: exit 0" [ $? -eq 0 ]
printf '%s\n%s\n%s\n' "$r1" "$r2" "$r3" >want.txt
check "each reply is moe-run --chat's for the conversation so far" cmp conv.txt want.txt
check "--stats at the end" grep -q 'experts:' conv.err
check "the replies are not all the same" sh -c "[ \"\$(sort -u want.txt | wc -l)\" -gt 1 ]"

printf '%s\n/stats\n/reset\n%s\n' "$u2" "$u1" | run -i >reset.txt 2>reset.err
printf '%s\n(a new conversation)\n%s\n' "$(run --chat -p "$u2")" "$r1" >reset_want.txt
check "/reset starts a new conversation" cmp reset.txt reset_want.txt
check "/stats shows the context and the expert cache" sh -c "grep -q 'context [0-9]* of 512 tokens' reset.err && grep -q 'experts:' reset.err"

# Ctrl-C in a long reply: the reply stops, the next line is answered
mkfifo in
run -i -n -1 <in >int.txt 2>int.err &
pid=$!
exec 3>in
printf 'Tell me all the generations of Adam.\n' >&3
sleep 0.3
kill -INT "$pid"
sleep 0.3
printf '/reset\n%s\n' "$u1" >&3
exec 3>&-
wait "$pid"
check "Ctrl-C stops a reply, not the conversation: exit 0" [ $? -eq 0 ]
printf '(a new conversation)\n%s\n' "$(run --chat -p "$u1" -n -1)" >int_want.txt
check "... and the next lines are answered: the output ends with /reset's and the reply to '$u1'" \
	py -c 'import sys; a, b = open(sys.argv[1], "rb").read(), open(sys.argv[2], "rb").read(); sys.exit(not a.endswith(b) or len(a) == len(b))' int.txt int_want.txt
check "... the stopped reply ended early" [ "$(wc -c <int.txt)" -lt 4000 ]
expect_error "-i with -p" "goes without" "$MOE_RUN" -m kjv.moe -i -p hi
finish
