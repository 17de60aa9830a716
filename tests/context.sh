#!/bin/sh
# A full context: --context-shift drops the older half after the first --keep tokens
# and goes on; each token it samples must be the one a fresh run, given exactly the
# tokens left in the context, samples (greedy, -b 1 so both runs add the same floats).
# --truncate keeps the prompt's first --keep and last tokens, leaving room for -n.
. "$TESTS_DIR/lib.sh"
: "${MOE_RUN:?run through make check}"
cd "$WORK"
check "synth" "$MOE_PACK" synth --layers 2 --hidden 64 --expert-ff 128 --vocab 128 m.moe
RUN="$MOE_RUN -m m.moe -b 1 --kv-type f32"
# the window rule, replayed: a fresh run of each context must give the token sampled from it
cat >replay.py <<'PY'
import json, subprocess, sys
run, prompt, ctx, keep, gen = sys.argv[1].split(), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
win = [int(t) for t in prompt.split(",")]
keep = len(win) if keep < 0 else min(keep, len(win))
out = [int(t) for t in open(gen).read().split()]
shifts = 0
for i, g in enumerate(out):
    fresh = subprocess.run(run + ["--tokens", ",".join(map(str, win)), "-n", "1", "-c", str(ctx)],
                           capture_output=True, text=True, check=True).stdout.split()
    assert [int(t) for t in fresh] == [g], (win, fresh, g)
    if i + 1 == len(out):
        break
    if len(win) >= ctx:  # full: drop half of what follows the kept head, then add g
        n_discard = (len(win) - keep) // 2
        win = win[:keep] + win[keep + n_discard:]
        shifts += 1
    win.append(g)
stats = json.load(open("s.json"))
assert stats["context_shifts"] == shifts and stats["generated_tokens"] == len(out), (stats, shifts)
print(len(out), "tokens,", shifts, "shifts")
PY
$RUN --tokens 5,6,7 -n 40 -c 10 --context-shift --keep 2 --stats-json s.json >gen 2>gerr
check "--context-shift --keep 2 runs past a full context" [ $? -eq 0 -a "$(wc -w <gen)" -eq 40 ]
check "... each token is a fresh run's on the tokens left in the context" py replay.py "$RUN" 5,6,7 10 2 gen
$RUN --tokens 5,6,7,8 -n 25 -c 9 --context-shift --keep -1 --stats-json s.json >gen 2>gerr
check "--keep -1 keeps the whole prompt" py replay.py "$RUN" 5,6,7,8 9 -1 gen
$RUN --tokens 5,6,7 -n 25 -c 8 --context-shift --stats-json s.json >gen 2>gerr
check "--keep 0 (the default)" py replay.py "$RUN" 5,6,7 8 0 gen
check "without --context-shift a full context stops" sh -c "$RUN --tokens 5,6,7 -n 25 -c 8 --stats-json s.json >gen 2>gerr &&
	grep -q 'context full (8 tokens)' gerr && [ \$(wc -w <gen) -eq 6 ] && grep -q '\"context_shifts\": 0, \"stop_reason\": \"context\"' s.json"
expect_error "--keep too large for the context" "leaves nothing for --context-shift" $RUN --tokens 1,2,3,4,5,6,7 -c 8 --context-shift --keep 7
# --truncate: ids 1..10 in a context of 8 with -n 3 keep the first --keep and the last ones, 5 in all
$RUN --tokens 1,2,3,4,5,6,7,8,9,10 -n 3 -c 8 --truncate --keep 2 > trunc 2> terr
check "--truncate --keep 2 leaves room for -n 3" grep -q 'truncated to its first 2 and last 3, leaving 3' terr
check "... and is the run of 1,2,8,9,10" sh -c "$RUN --tokens 1,2,8,9,10 -n 3 -c 8 | cmp - trunc"
check "... generating all 3" [ "$(wc -w <trunc)" -eq 3 ]
$RUN --tokens 1,2,3,4,5,6 -n 4 -c 8 --truncate > trunc 2> terr
check "--truncate also when the prompt fits but -n does not" grep -q 'truncated to its first 0 and last 4, leaving 4' terr
check "... the run of 3,4,5,6" sh -c "$RUN --tokens 3,4,5,6 -n 4 -c 8 | cmp - trunc"
$RUN --tokens 1,2,3,4,5,6,7,8,9,10 -n -1 -c 8 --truncate > trunc 2> terr
check "--truncate -n -1 leaves half the context" grep -q 'truncated to its first 0 and last 4, leaving 4' terr
finish
