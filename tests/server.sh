#!/bin/sh
# moe-server with a real client, curl: answers equal moe-run's for the same prompt
# and settings (completions and chat, whole and streamed), 4 concurrent clients
# batched together with the experts streaming under a budget smaller than they are,
# prefix reuse, every bad request's error (the server stays up), a client that
# leaves mid-stream frees its slot, peak RSS within the budget + 64 MiB.
. "$TESTS_DIR/lib.sh"
: "${MOE_SERVER:?run through make check}" "${MOE_RUN:?}" "${DEMO_MODEL:?}"
command -v curl >/dev/null || { echo "server.sh: curl is missing (apt-get install curl)"; exit 77; }
cd "$WORK"
"$MOE_PACK" -q q8 "$DEMO_MODEL" kjv.moe >/dev/null 2>&1
check "the demo model packs" [ -f kjv.moe ]

# start_server LOG ARGS...: start it on a free port; sets PORT and PID
start_server() {
	log=$1
	shift
	"$MOE_SERVER" -m kjv.moe --port 0 "$@" 2>"$log" &
	PID=$!
	PORT=
	for _ in $(seq 100); do
		PORT=$(sed -n 's|.*on http://127.0.0.1:\([0-9]*\):.*|\1|p' "$log")
		[ -n "$PORT" ] && break
		sleep 0.1
	done
	[ -n "$PORT" ]
}
stop_server() { kill "$PID" 2>/dev/null && wait "$PID"; }
field() { py -c 'import json, sys
v = json.load(open(sys.argv[1]))
for k in sys.argv[2:]:
    v = v[int(k)] if k.isdigit() else v[k]
sys.stdout.write(v if isinstance(v, str) else json.dumps(v))' "$@"; }
# status URL BODY [CURL ARGS...]: the HTTP status; the body in resp.json
status() {
	url=$1 body=$2
	shift 2
	curl -s -o resp.json -w '%{http_code}' "$@" -d "$body" "http://127.0.0.1:$PORT$url"
}

# 7 MB of experts stream through what 12M leaves after 4 slots' KV caches
check "moe-server starts (4 slots, --ram-budget 12M, --api-key)" start_server srv.log --parallel 4 -c 256 \
	--ram-budget 12M --api-key sekrit --queue 8
cp "$WORK/err" start.err 2>/dev/null
grep -q 'expert cache' srv.log || cat srv.log >&2
AUTH="Authorization: Bearer sekrit"
check "GET /health" sh -c "curl -sf http://127.0.0.1:$PORT/health | grep -q ok"
check "GET /v1/models lists kjv.moe" sh -c "curl -sf -H '$AUTH' http://127.0.0.1:$PORT/v1/models | grep -q '\"id\":\"kjv.moe\"'"

# greedy text equals moe-run's
"$MOE_RUN" -m kjv.moe -p 'And God said' -n 40 -c 256 >want.txt
check "POST /v1/completions" [ "$(status /v1/completions '{"prompt": "And God said", "max_tokens": 40, "temperature": 0}' -H "$AUTH")" = 200 ]
cp resp.json completion.json
check "... its text is moe-run's greedy continuation" sh -c "$(command -v "$PYTHON3") -c 'import json,sys; sys.stdout.write(json.load(open(\"completion.json\"))[\"choices\"][0][\"text\"])' | cmp - want.txt"
check "... finish_reason length, usage 4 + 40" sh -c "[ \"\$(cd '$WORK' && $(command -v "$PYTHON3") -c 'import json; v = json.load(open(\"completion.json\")); print(v[\"choices\"][0][\"finish_reason\"], v[\"usage\"][\"prompt_tokens\"], v[\"usage\"][\"completion_tokens\"])')\" = 'length 4 40' ]"

"$MOE_RUN" -m kjv.moe --chat -p 'Who made the heaven?' -n 30 -c 256 >chat_want.txt
check "POST /v1/chat/completions" [ "$(status /v1/chat/completions '{"model": "kjv.moe", "messages": [{"role": "user", "content": "Who made the heaven?"}], "max_tokens": 30, "temperature": 0}' -H "$AUTH")" = 200 ]
field resp.json choices 0 message content >chat_got.txt
check "... the message is moe-run --chat's" cmp chat_got.txt chat_want.txt
# the same, streamed: the deltas add up to the same text, then [DONE]
curl -sN -H "$AUTH" -d '{"messages": [{"role": "user", "content": "Who made the heaven?"}], "max_tokens": 30, "temperature": 0, "stream": true, "stream_options": {"include_usage": true}}' \
	"http://127.0.0.1:$PORT/v1/chat/completions" >sse.txt
py - sse.txt >sse_text.txt <<'PY'
import json, sys
events = [l[6:] for l in open(sys.argv[1]).read().split("\n") if l.startswith("data: ")]
assert events[-1] == "[DONE]", events[-1]
chunks = [json.loads(e) for e in events[:-1]]
assert all(c["object"] == "chat.completion.chunk" for c in chunks)
assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
assert chunks[-1]["usage"]["completion_tokens"] == 30 and chunks[-1]["choices"] == []
assert chunks[-2]["choices"][0]["finish_reason"] == "length"
sys.stdout.write("".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]))
PY
check "streamed chat: chunks, role first, finish_reason, usage, [DONE]; the text is the same" cmp sse_text.txt chat_want.txt

# a stop string: the text before it, finish_reason stop
check "stop" [ "$(status /v1/completions '{"prompt": "And God said", "max_tokens": 40, "temperature": 0, "stop": ["Christ"]}' -H "$AUTH")" = 200 ]
field resp.json choices 0 text >stop.txt
check "... the text ends before the stop string" grep -q 'If thou be the $' stop.txt
check "... finish_reason stop" [ "$(field resp.json choices 0 finish_reason)" = stop ]

# logprobs: the log-softmax of the model's logits, against moe-run's logits of the
# same tokens (--logits-out: every position of the prompt + the greedy reply)
check "completions with logprobs 3" [ "$(status /v1/completions '{"prompt": "And God said", "max_tokens": 6, "temperature": 0, "logprobs": 3}' -H "$AUTH")" = 200 ]
cp resp.json lp.json
ids=$("$MOE_RUN" -m kjv.moe --tokenize -p 'And God said' | tr -d '[] ')
gen=$("$MOE_RUN" -m kjv.moe --tokens "$ids" -n 6 -c 256 2>/dev/null | tr ' ' ',')
"$MOE_RUN" -m kjv.moe --tokens "$ids,$gen" -n 0 -c 256 --logits-out lp.bin >/dev/null 2>&1
cat >lp_check.py <<'PY'
import json, sys
import numpy as np
v = json.load(open(sys.argv[1]))["choices"][0]
ids, gen = [int(x) for x in sys.argv[3].split(",")], [int(x) for x in sys.argv[4].split(",")]
logits = np.fromfile(sys.argv[2], dtype=np.float32).astype(np.float64)
logits = logits.reshape(len(ids) + len(gen), -1)
lp = v["logprobs"]
assert len(lp["tokens"]) == len(gen) == 6 and "".join(lp["tokens"]) == v["text"], lp["tokens"]
offset = 0
for i, g in enumerate(gen):
    row = logits[len(ids) - 1 + i]
    ref = row - (row.max() + np.log(np.exp(row - row.max()).sum()))
    assert abs(lp["token_logprobs"][i] - ref[g]) < 1e-4, (i, lp["token_logprobs"][i], ref[g])
    top = sorted(lp["top_logprobs"][i].values(), reverse=True)
    want = np.sort(ref)[::-1][:3]
    assert len(top) == 3 and np.allclose(top, want, atol=1e-4), (i, top, want)
    assert lp["text_offset"][i] == offset
    offset += len(lp["tokens"][i])
print("6 tokens: logprobs and top 3 within 1e-4 of the reference")
PY
check "... the log-softmax of moe-run's logits for the same tokens (numpy)" py lp_check.py lp.json lp.bin "$ids" "$gen"
# echo with max_tokens 0 (how evaluation harnesses score a text): the prompt's own
# log-probabilities, every position but the first; the prompt as text or as ids;
# 47 tokens, more than one prompt batch (-b 32)
etext='In the beginning God created the heaven and the earth. And the earth was without form, and void; and darkness was upon the face of the deep. And the Spirit of God moved upon the face of the waters.'
eids=$("$MOE_RUN" -m kjv.moe --tokenize -p "$etext" | tr -d '[] ')
"$MOE_RUN" -m kjv.moe --tokens "$eids" -n 0 -c 256 --logits-out echo.bin >/dev/null 2>&1
check "echo, max_tokens 0, logprobs 2" [ "$(status /v1/completions "{\"prompt\": \"$etext\", \"max_tokens\": 0, \"echo\": true, \"logprobs\": 2, \"temperature\": 0}" -H "$AUTH")" = 200 ]
cp resp.json echo.json
check "... the same with the prompt as token ids" [ "$(status /v1/completions "{\"prompt\": [[${eids}]], \"max_tokens\": 0, \"echo\": true, \"logprobs\": 2}" -H "$AUTH")" = 200 ]
cp resp.json echo_ids.json
cat >echo_check.py <<'PY'
import json, sys
import numpy as np
a, b = (json.load(open(f))["choices"][0] for f in sys.argv[1:3])
ids, text = [int(x) for x in sys.argv[4].split(",")], sys.argv[5]
logits = np.fromfile(sys.argv[3], dtype=np.float32).astype(np.float64).reshape(len(ids), -1)
lp = a["logprobs"]
assert a == b, (a, b)
assert a["text"] == text and "".join(lp["tokens"]) == text and a["finish_reason"] == "length", a["text"]
assert len(lp["tokens"]) == len(ids) and lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
for t in range(1, len(ids)):
    row = logits[t - 1]
    ref = row - (row.max() + np.log(np.exp(row - row.max()).sum()))
    assert abs(lp["token_logprobs"][t] - ref[ids[t]]) < 1e-4, (t, lp["token_logprobs"][t], ref[ids[t]])
    assert np.allclose(sorted(lp["top_logprobs"][t].values(), reverse=True), np.sort(ref)[::-1][:2], atol=1e-4)
print("%d prompt tokens within 1e-4 of the reference" % len(ids))
PY
check "... the prompt's log-softmax from moe-run's logits (numpy), the same for text and ids" py echo_check.py echo.json echo_ids.json echo.bin "$eids" "$etext"
check "chat with logprobs and top_logprobs 2" [ "$(status /v1/chat/completions '{"messages": [{"role": "user", "content": "Who made the heaven?"}], "max_tokens": 8, "temperature": 0, "logprobs": true, "top_logprobs": 2}' -H "$AUTH")" = 200 ]
cp resp.json lpchat.json
curl -sN -H "$AUTH" -d '{"messages": [{"role": "user", "content": "Who made the heaven?"}], "max_tokens": 8, "temperature": 0, "logprobs": true, "top_logprobs": 2, "stream": true}' \
	"http://127.0.0.1:$PORT/v1/chat/completions" >lpsse.txt
cat >lpchat_check.py <<'PY'
import json, sys
v = json.load(open(sys.argv[1]))["choices"][0]
content = v["logprobs"]["content"]
assert len(content) == 8 and "".join(c["token"] for c in content) == v["message"]["content"]
for c in content: # greedy: the token is the likeliest, its bytes its UTF-8
    assert c["top_logprobs"][0]["token"] == c["token"] and c["top_logprobs"][0]["logprob"] == c["logprob"]
    assert c["top_logprobs"][1]["logprob"] <= c["logprob"] <= 0 and bytes(c["bytes"]) == c["token"].encode()
events = [l[6:] for l in open(sys.argv[2]).read().split("\n") if l.startswith("data: ")][:-1]
streamed = [c for e in events for ch in json.loads(e)["choices"] if ch["logprobs"] for c in ch["logprobs"]["content"]]
assert streamed == content, (streamed, content)
print("8 tokens, the same streamed")
PY
check "... one entry per token, the likeliest first, the same when streamed" py lpchat_check.py lpchat.json lpsse.txt

# 4 clients at once, each with its own prompt: each answer is moe-run's, bit for bit.
# The kernels give a token the same sums in any batch (test_kernels) and attention
# the same in any split of the context into steps (test_api), so neither the decode
# steps' batches nor a slot's reuse of a prefix another prompt computed moves a bit.
for i in 1 2 3 4; do
	"$MOE_RUN" -m kjv.moe -p "And the LORD said unto $i" -n 48 -c 256 >want$i.txt
done
clients=
for i in 1 2 3 4; do
	curl -s -H "$AUTH" -d "{\"prompt\": \"And the LORD said unto $i\", \"max_tokens\": 48, \"temperature\": 0}" \
		"http://127.0.0.1:$PORT/v1/completions" -o c$i.json &
	clients="$clients $!"
done
for p in $clients; do wait "$p"; done
for i in 1 2 3 4; do
	field c$i.json choices 0 text >got$i.txt 2>/dev/null
	check "concurrent client $i gets moe-run's text" cmp got$i.txt want$i.txt
done
curl -s "http://127.0.0.1:$PORT/metrics" >metrics.txt
metric() { sed -n "s/^$1 //p" metrics.txt; }
check "/metrics is Prometheus text with expert cache figures" sh -c "grep -q '^# TYPE moe_expert_bytes_read_total counter' metrics.txt && [ $(metric moe_expert_misses_total) -gt 0 ]"
check "decode steps were batched: $(metric moe_decode_batch_rows_total) rows in $(metric moe_decode_batches_total) steps" \
	[ "$(metric moe_decode_batch_rows_total)" -gt "$(( $(metric moe_decode_batches_total) + 40 ))" ]
# the next turn of a conversation: client 1's prompt and answer, and more; the
# slot that holds them is chosen and its context reused
turn2=$(py -c 'import json, sys; print(json.dumps({"prompt": sys.argv[1] + open("got1.txt").read() + "\nAnd", "max_tokens": 4, "temperature": 0}))' "And the LORD said unto 1")
check "the next turn" [ "$(status /v1/completions "$turn2" -H "$AUTH")" = 200 ]
check "... reuses the cached tokens: $(field resp.json usage prompt_tokens_details cached_tokens) of $(field resp.json usage prompt_tokens)" \
	[ "$(field resp.json usage prompt_tokens_details cached_tokens)" -ge 40 ]
field resp.json choices 0 text >turn2.txt
py -c 'import json, sys; print(json.loads(sys.argv[1])["prompt"], end="")' "$turn2" >turn2.prompt
"$MOE_RUN" -m kjv.moe -p "$(cat turn2.prompt)" -n 4 -c 256 >turn2.want
check "... and answers as moe-run does given the whole text: $(cat turn2.txt)" cmp turn2.txt turn2.want

# bad requests: OpenAI-shaped errors, and the server goes on
bad() { # bad DESCRIPTION STATUS URL BODY [CURL ARGS]
	d=$1 want=$2
	shift 2
	got=$(status "$@")
	if [ "$got" = "$want" ] && py -c 'import json, sys; e = json.load(open("resp.json"))["error"]; assert e["message"] and e["type"]'; then
		ok
	else
		not_ok "$d: status $got, want $want: $(cat resp.json)"
	fi
}
bad "malformed JSON" 400 /v1/chat/completions '{"messages": [' -H "$AUTH"
bad "not an object" 400 /v1/chat/completions '[1, 2]' -H "$AUTH"
bad "messages of the wrong type" 400 /v1/chat/completions '{"messages": "hi"}' -H "$AUTH"
bad "content of the wrong type" 400 /v1/chat/completions '{"messages": [{"role": "user", "content": 3}]}' -H "$AUTH"
bad "temperature out of range" 400 /v1/completions '{"prompt": "a", "temperature": "hot"}' -H "$AUTH"
bad "n > 1" 400 /v1/completions '{"prompt": "a", "n": 2}' -H "$AUTH"
bad "top_logprobs without logprobs" 400 /v1/chat/completions '{"messages": [{"role": "user", "content": "a"}], "top_logprobs": 2}' -H "$AUTH"
bad "logprobs over 20" 400 /v1/completions '{"prompt": "a", "logprobs": 21}' -H "$AUTH"
bad "max_tokens 0 without echo" 400 /v1/completions '{"prompt": "a", "max_tokens": 0}' -H "$AUTH"
bad "echo on chat" 400 /v1/chat/completions '{"messages": [{"role": "user", "content": "a"}], "echo": true}' -H "$AUTH"
bad "a token id out of range" 400 /v1/completions '{"prompt": [1, 99999999]}' -H "$AUTH"
bad "unknown model" 404 /v1/completions '{"model": "gpt-4", "prompt": "a"}' -H "$AUTH"
long=$(py -c 'print("And God said " * 200)')
bad "prompt longer than the context" 400 /v1/completions "{\"prompt\": \"$long\"}" -H "$AUTH"
py -c 'print("{\"prompt\": \"" + "a" * 2000000 + "\"}")' >big.json
bad "a body over --max-body" 413 /v1/completions @big.json -H "$AUTH"
bad "no API key" 401 /v1/completions '{"prompt": "a"}'
bad "a wrong API key" 401 /v1/models '' -H "Authorization: Bearer nope"
bad "no such endpoint" 404 /v1/embeddings '{"input": "a"}' -H "$AUTH"
check "still serving after all that" sh -c "curl -sf -H '$AUTH' -d '{\"prompt\": \"And\", \"max_tokens\": 3}' http://127.0.0.1:$PORT/v1/completions | grep -q text_completion"

# leave BODY WHEN: a raw client that posts BODY to /v1/completions and hangs up once
# it has the first event (WHEN=event) or the headers (WHEN=headers); prints the
# status line
leave() {
	py - "$PORT" "$1" "$2" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
body, until = sys.argv[2].encode(), b"data: " if sys.argv[3] == "event" else b"\r\n\r\n"
s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sekrit\r\nContent-Type: application/json\r\n"
          b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
got = b""
while until not in got:
    chunk = s.recv(4096)
    if not chunk:
        break
    got += chunk
s.close()
print(got.split(b"\r\n")[0].decode())
PY
}

# a client that leaves mid-stream: its generation stops and its slot is free
leave '{"prompt": "And God said", "max_tokens": 200, "stream": true}' event >leave.txt
sleep 1
curl -s "http://127.0.0.1:$PORT/metrics" >metrics.txt
check "a client leaving mid-stream cancels its request" [ "$(metric moe_requests_canceled_total)" = 1 ]
check "... and frees its slot" [ "$(metric moe_slots_busy)" = 0 ]
# and one that leaves while a whole (not streamed) answer is generated: the white
# space sent for each token finds it gone
leave '{"prompt": "And God said", "max_tokens": 400}' headers >leave2.txt
sleep 1
curl -s "http://127.0.0.1:$PORT/metrics" >metrics.txt
check "a client leaving before its whole answer cancels it ($(cat leave2.txt))" \
	[ "$(metric moe_requests_canceled_total)" = 2 ]
check "... and frees its slot" [ "$(metric moe_slots_busy)" = 0 ]
hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$PID/status")
check "peak RSS $hwm kB is within --ram-budget 12M + 64 MiB" [ "$hwm" -le $(( (12 + 64) * 1024 )) ]
check "SIGTERM stops it" stop_server

# a full queue: 503
check "a server with one slot and no queue" start_server srv1.log --parallel 1 --queue 0 -c 1024
curl -s -d '{"prompt": "And God said", "max_tokens": 1000, "temperature": 0}' "http://127.0.0.1:$PORT/v1/completions" -o slow.json &
slow=$!
sleep 0.3
bad "busy: 503" 503 /v1/completions '{"prompt": "a"}'
wait "$slow"
check "the first request still finishes" grep -q text_completion slow.json
stop_server
# a long prompt is prefilled a batch at a time, a decode step between batches: a
# stream already running goes on while it is prefilled. With -b 1 each of the long
# prompt's ~400 tokens lets the stream take a step, so its 200 tokens are all out
# before the long request's answer; prefilled in one go, the stream would stall
# with most of them still to come (an order, not a time)
long=$(py -c 'print(" ".join(["And the earth was without form, and void."] * 36))')
check "a server with 2 slots, -b 1" start_server srv2.log --parallel 2 -b 1 -c 512
curl -sN -d '{"prompt": "And God said", "max_tokens": 200, "temperature": 0, "stream": true}' \
	"http://127.0.0.1:$PORT/v1/completions" >run.sse &
streamer=$!
for _ in $(seq 100); do grep -q '^data: ' run.sse && break; sleep 0.05; done
curl -s -d "{\"prompt\": \"$long\", \"max_tokens\": 1}" "http://127.0.0.1:$PORT/v1/completions" -o long.json
n_long=$(field long.json usage prompt_tokens)
check "a $n_long-token prompt was prefilled while a stream ran to its end" \
	sh -c "[ '$n_long' -ge 300 ] && grep -q '^data: \[DONE\]' run.sse"
wait "$streamer"
stop_server
expect_error "a pack that is not there" "no.moe" "$MOE_SERVER" -m no.moe --port 0
expect_error "a bad option" "--parallel" "$MOE_SERVER" -m kjv.moe --parallel 0
finish
