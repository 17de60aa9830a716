"""The tokenizer.* keys of a GGUF file, for write_model.py and the fuzz corpus: copied from another GGUF
(for example llama.cpp's models/ggml-vocab-*.gguf), or written from a Hugging Face
tokenizer folder the way llama.cpp's convert_hf_to_gguf.py writes them
(get_vocab_base / SpecialVocab for byte-level BPE, the sentencepiece path for
"llama"); small() and small_spm() are tiny ones, with_keys() puts keys into a GGUF.

Keys are (name, GGUF value type, value); an array is (element type, list).
"""
import json
import os
import struct

U32, I32, F32, BOOL, STR, ARR = 4, 5, 6, 7, 8, 9
# llama.cpp's token types
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def read_tokenizer_keys(path):
    """tokenizer.* keys of a GGUF v2/v3 file"""
    return [kv for kv in _read_header(open(path, "rb").read())[0] if kv[0].startswith("tokenizer.")]


def with_keys(path, out, keys):
    """path's GGUF rewritten to out with keys in place of its tokenizer.* keys"""
    data = open(path, "rb").read()
    kvs, infos, data_start = _read_header(data)
    kvs = [kv for kv in kvs if not kv[0].startswith("tokenizer.")] + keys
    align = next((v for k, t, v in kvs if k == "general.alignment"), 32)
    head = data[:8] + struct.pack("<QQ", len(infos), len(kvs))
    head += b"".join(encode_value(STR, k) + struct.pack("<I", t) + encode_value(t, v) for k, t, v in kvs)
    head += b"".join(infos)
    head += bytes((align - len(head) % align) % align)
    open(out, "wb").write(head + data[data_start:])


def _read_header(data):
    """(keys, raw tensor infos, offset of the data section)"""
    pos = 0

    def take(fmt):
        nonlocal pos
        v = struct.unpack_from(fmt, data, pos)[0]
        pos += struct.calcsize(fmt)
        return v

    def string():
        nonlocal pos
        n = take("<Q")
        s = data[pos:pos + n].decode("utf-8", "surrogateescape")
        pos += n
        return s

    def value(t):
        if t == STR:
            return string()
        if t == ARR:
            et, n = take("<I"), take("<Q")
            return (et, [value(et) for _ in range(n)])
        return take(_SCALAR[t])

    assert data[:4] == b"GGUF"
    pos = 8
    n_tensors, n_kv = take("<Q"), take("<Q")
    keys = []
    for _ in range(n_kv):
        k = string()
        t = take("<I")
        keys.append((k, t, value(t)))
    infos = []
    for _ in range(n_tensors):
        start = pos
        string()
        nd = take("<I")
        pos += 8 * nd + 4 + 8
        infos.append(data[start:pos])
    align = next((v for k, t, v in keys if k == "general.alignment"), 32)
    return keys, infos, pos + (align - pos % align) % align


def _looks_special(tok):
    """convert_hf_to_gguf.py does_token_look_special"""
    return (tok in ("<pad>", "<mask>", "<2mass>", "[@BOS@]") or (tok.startswith("<|") and tok.endswith("|>"))
            or (tok.startswith("<\uff5c") and tok.endswith("\uff5c>"))
            or (tok.startswith("<unused") and tok.endswith(">")))


def _config_token(cfg, key):
    v = cfg.get(key)
    return v.get("content") if isinstance(v, dict) else v


def from_hf(folder, pre):
    """Keys for the tokenizer.json (+ tokenizer_config.json) in folder; pre "llama"
    writes the sentencepiece kind, anything else is tokenizer.ggml.pre of a gpt2 one."""
    tj = json.load(open(os.path.join(folder, "tokenizer.json"), encoding="utf-8"))
    cfg_path = os.path.join(folder, "tokenizer_config.json")
    cfg = json.load(open(cfg_path, encoding="utf-8")) if os.path.exists(cfg_path) else {}
    vocab = dict(tj["model"]["vocab"])
    added = {a["content"]: a for a in tj.get("added_tokens", [])}
    for a in added.values():
        vocab[a["content"]] = a["id"]
    n = max(vocab.values()) + 1
    by_id = {i: t for t, i in vocab.items()}
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    tokens, types = [], []
    for i in range(n):
        t = by_id.get(i)
        if t is None:
            tokens.append("[PAD%d]" % i)
            types.append(UNUSED)
        elif t in added:
            a = added[t]
            if pre == "llama" and t == tj["model"].get("unk_token"):
                types.append(UNKNOWN)
            else:
                types.append(CONTROL if a.get("special") or _looks_special(t) else USER_DEFINED)
            tokens.append(t)
        elif pre == "llama" and len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
            tokens.append(t)
            types.append(BYTE)
        else:
            tokens.append(t)
            types.append(NORMAL)
    keys = [("tokenizer.ggml.model", STR, "llama" if pre == "llama" else "gpt2")]
    if pre != "llama":
        keys.append(("tokenizer.ggml.pre", STR, pre))
    keys += [("tokenizer.ggml.tokens", ARR, (STR, tokens)), ("tokenizer.ggml.token_type", ARR, (I32, types))]
    if pre == "llama":
        # sentencepiece scores, which the GGUF keeps instead of merges: the order of
        # tokenizer.json's merges is the order of their merged tokens' scores
        first = {}
        for r, m in enumerate(merges):
            left, right = m.split(" ", 1)
            first.setdefault(left + right, r)
        keys.append(("tokenizer.ggml.scores", ARR, (F32, [-float(first.get(t, len(merges))) for t in tokens])))
    else:
        keys.append(("tokenizer.ggml.merges", ARR, (STR, merges)))
    for name in ("bos", "eos"):
        t = _config_token(cfg, name + "_token")
        if t in vocab:
            keys.append(("tokenizer.ggml.%s_token_id" % name, U32, vocab[t]))
    if pre == "llama" and tj["model"].get("unk_token") in vocab:
        keys.append(("tokenizer.ggml.unknown_token_id", U32, vocab[tj["model"]["unk_token"]]))
    for flag in ("add_bos_token", "add_eos_token"):
        if flag in cfg:
            keys.append(("tokenizer.ggml." + flag, BOOL, bool(cfg[flag])))
    if isinstance(cfg.get("chat_template"), str):
        keys.append(("tokenizer.chat_template", STR, cfg["chat_template"]))
    return keys


def byte_chars():
    """GPT-2's byte -> character map, as a list by byte"""
    printable = [b for b in range(256) if 33 <= b <= 126 or 161 <= b <= 172 or b >= 174]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) if b in printable else chr(256 + others.index(b)) for b in range(256)]


def small(pre="qwen2"):
    """A byte-level tokenizer of 258 ids: the 256 byte characters, "he" (one merge), <|end|>"""
    return [("tokenizer.ggml.model", STR, "gpt2"), ("tokenizer.ggml.pre", STR, pre),
            ("tokenizer.ggml.tokens", ARR, (STR, byte_chars() + ["he", "<|end|>"])),
            ("tokenizer.ggml.token_type", ARR, (I32, [NORMAL] * 257 + [CONTROL])),
            ("tokenizer.ggml.merges", ARR, (STR, ["h e"])), ("tokenizer.ggml.eos_token_id", U32, 257),
            ("tokenizer.chat_template", STR, "{% for m in messages %}{{ m['content'] + '<|end|>' }}{% endfor %}")]


def small_spm():
    """A sentencepiece tokenizer of 264 ids: <unk> <s> </s>, 256 byte tokens, then pieces by score"""
    pieces = ["\u2581", "a", "b", "\u2581a", "ab"]
    return [("tokenizer.ggml.model", STR, "llama"),
            ("tokenizer.ggml.tokens", ARR, (STR, ["<unk>", "<s>", "</s>"] + ["<0x%02X>" % b for b in range(256)] + pieces)),
            ("tokenizer.ggml.token_type", ARR, (I32, [UNKNOWN, CONTROL, CONTROL] + [BYTE] * 256 + [NORMAL] * 5)),
            ("tokenizer.ggml.scores", ARR, (F32, [0.0] * 259 + [-1.0, -2.0, -3.0, -4.0, -5.0])),
            ("tokenizer.ggml.bos_token_id", U32, 1), ("tokenizer.ggml.eos_token_id", U32, 2),
            ("tokenizer.ggml.unknown_token_id", U32, 0), ("tokenizer.ggml.add_bos_token", BOOL, True)]


def encode_value(t, v):
    if t == STR:
        b = v.encode("utf-8", "surrogateescape")
        return struct.pack("<Q", len(b)) + b
    if t == ARR:
        et, items = v
        return struct.pack("<IQ", et, len(items)) + b"".join(encode_value(et, x) for x in items)
    return struct.pack(_SCALAR[t], v)


def n_tokens(keys):
    return next(len(v[1]) for k, t, v in keys if k == "tokenizer.ggml.tokens")
