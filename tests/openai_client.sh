#!/bin/sh
# moe-server with the official OpenAI client library (npm "openai", major 4),
# installed at run time into a scratch folder; tests/openai_client.mjs holds the
# checks. Skipped (77) without node and npm, or when npm cannot fetch the package.
. "$TESTS_DIR/lib.sh"
: "${MOE_SERVER:?run through make check}" "${MOE_RUN:?}" "${DEMO_MODEL:?}"
command -v node >/dev/null && command -v npm >/dev/null || { echo "openai_client.sh: node and npm are missing"; exit 77; }
cd "$WORK"
if ! timeout 300 npm install --silent --no-audit --no-fund --prefix "$WORK" openai@4 >npm.log 2>&1; then
	echo "openai_client.sh: npm cannot install openai: $(tail -1 npm.log)"
	exit 77
fi
cp "$TESTS_DIR/openai_client.mjs" .
"$MOE_PACK" -q q8 "$DEMO_MODEL" kjv.moe >/dev/null 2>&1
check "the demo model packs" [ -f kjv.moe ]
WANT_CHAT=$("$MOE_RUN" -m kjv.moe --chat -p 'Who made the heaven?' -n 30 -c 256; printf x)
WANT_COMPLETION=$("$MOE_RUN" -m kjv.moe -p 'And God said' -n 40 -c 256; printf x)
export WANT_CHAT="${WANT_CHAT%x}" WANT_COMPLETION="${WANT_COMPLETION%x}"
for i in 1 2 3 4; do
	w=$("$MOE_RUN" -m kjv.moe -p "And the LORD said unto $i" -n 48 -c 256; printf x)
	export "WANT_$i=${w%x}"
done
# the quick start's setting: a budget smaller than the experts (10 MB)
"$MOE_SERVER" -m kjv.moe --port 0 --parallel 4 -c 256 --ram-budget 12M --api-key sekrit 2>srv.log &
PID=$!
PORT=
for _ in $(seq 100); do
	PORT=$(sed -n 's|.*on http://127.0.0.1:\([0-9]*\):.*|\1|p' srv.log)
	[ -n "$PORT" ] && break
	sleep 0.1
done
check "moe-server starts" [ -n "$PORT" ]
BASE_URL="http://127.0.0.1:$PORT/v1" API_KEY=sekrit MODEL=kjv.moe node openai_client.mjs >node.out 2>&1
st=$?
cat node.out
check "the OpenAI client's checks: $(grep -c '^ok' node.out) ok, $(grep -c '^not ok' node.out) not ok" \
	sh -c "[ $st -eq 0 ] && [ \$(grep -c '^ok' node.out) -ge 12 ] && ! grep -q '^not ok' node.out"
kill "$PID"
check "the server stops on SIGTERM" wait "$PID"
finish
