"""Train moemap's embedded demo model: a small Mixtral-architecture MoE (8 experts, top-2)
on the King James Bible from Debian's bible-kjv-text package, saved in Hugging Face layout.

The quick start and CI never run this: its output, models/kjv-moe/, is committed.

    apt-get install python3-torch python3-numpy bible-kjv bible-kjv-text
    /usr/bin/python3 tools/demo/train_demo.py [--out models/kjv-moe] [--steps 1600]

Steps, each deterministic for a given machine and thread count:
  1. corpus: `bible Ge1:1-Re22:21` (bible-kjv + bible-kjv-text), one line per verse, a
     "Book N" line per chapter; every 20th chapter (from the 8th) is held out, never trained on.
  2. tokenizer: byte-level BPE (4096 ids) trained on the training split and written as a
     tokenizer.json that Hugging Face's tokenizers reads (Split regex + ByteLevel).
  3. model: Mixtral as transformers' MixtralForCausalLM computes it (RMSNorm, rotate-half
     RoPE, GQA, softmax router -> top-2 -> renormalized weights, SwiGLU experts), trained
     with AdamW and the Switch-style load-balancing loss so every expert gets work; matmuls
     in bfloat16 autocast (float32 master weights; the router in float32), which is 6x the
     float32 speed on a CPU with AVX512-BF16.
  4. export: config.json, model.safetensors (bf16), tokenizer.json, tokenizer_config.json,
     generation_config.json, heldout.txt, train_log.json.

Why the KJV: it is the largest English prose Debian ships as plain text (4.3 MB), it is in the
public domain, and its regular style lets a 13M-parameter model write readable sentences
after half an hour on two cores, which quotation files (fortunes) or manuals do not.
"""
import argparse
import collections
import ctypes
import heapq
import json
import math
import os
import re
import struct
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

CONFIG = dict(
    architectures=["MixtralForCausalLM"], model_type="mixtral",
    vocab_size=4096, hidden_size=256, intermediate_size=256, num_hidden_layers=6,
    num_attention_heads=8, num_key_value_heads=4, head_dim=32, num_local_experts=8,
    num_experts_per_tok=2, hidden_act="silu", max_position_embeddings=512, rope_theta=10000.0,
    rms_norm_eps=1e-5, tie_word_embeddings=False, router_aux_loss_coef=0.01,
    bos_token_id=1, eos_token_id=2, torch_dtype="bfloat16", sliding_window=None,
    attention_dropout=0.0, initializer_range=0.02, output_router_logits=False,
    router_jitter_noise=0.0, use_cache=True,
)
SPECIALS = ["<unk>", "<s>", "</s>"]
# Pre-tokenizer pattern: words with their leading space, numbers, punctuation runs, spaces.
# Written so that PCRE2, Oniguruma (HF tokenizers), JavaScript and Python's re agree on it.
SPLIT = r" ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+"
HELDOUT_EVERY, HELDOUT_FROM = 20, 7


# ---- 1. corpus ----

def read_kjv():
    """[(heading, [verse, ...]), ...] in canonical order, from the bible program."""
    try:
        out = subprocess.run(["bible", "Ge1:1-Re22:21"], check=True, capture_output=True, text=True).stdout
    except FileNotFoundError:
        sys.exit("train_demo: no `bible` program: apt-get install bible-kjv bible-kjv-text")
    chapters, verses = [], None
    for line in out.split("\n"):
        if not line.strip():
            continue
        m = re.match(r"^  ?\s*(\d+) (.*)$", line)
        if line[0] != " " and re.match(r"^[1-3A-Z][A-Za-z ]* \d+$", line):
            verses = []
            chapters.append((line.strip(), verses))
        elif m:
            verses.append(m.group(2).strip())
        else:  # a verse wrapped at 80 columns
            verses[-1] += " " + line.strip()
    if len(chapters) != 1189:
        sys.exit("train_demo: expected 1189 chapters from `bible`, got %d" % len(chapters))
    return chapters


def chapter_text(heading, verses):
    return heading + "\n" + "\n".join(verses) + "\n\n"


# ---- 2. tokenizer ----

def gpt2_byte_map():
    """GPT-2's printable stand-ins for the 256 byte values (ByteLevel pre-tokenizer)."""
    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    chars, n = keep[:], 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(keep, chars)}


BYTE_MAP = gpt2_byte_map()


def pieces(text):
    return [''.join(BYTE_MAP[b] for b in p.encode()) for p in re.findall(SPLIT, text)]


def train_bpe(text, vocab_size):
    """Byte-level BPE by pair counts over distinct words; ties go to the smaller pair."""
    words = collections.Counter(pieces(text))
    base = sorted(set(BYTE_MAP.values()))
    vocab = SPECIALS + base
    syms = [list(w) for w in words]
    freq = list(words.values())
    pairs, where = collections.Counter(), collections.defaultdict(set)
    for i, s in enumerate(syms):
        for a, b in zip(s, s[1:]):
            pairs[a, b] += freq[i]
            where[a, b].add(i)
    heap = [(-n, p) for p, n in pairs.items()]
    heapq.heapify(heap)
    merges = []
    while len(vocab) < vocab_size and heap:
        n, best = heapq.heappop(heap)
        if pairs.get(best, 0) != -n:
            continue  # stale entry: the count changed since it was pushed
        if -n < 2:
            break
        a, b = best
        merges.append(best)
        vocab.append(a + b)
        touched = set()
        for i in where.pop(best):
            s, f = syms[i], freq[i]
            for x, y in zip(s, s[1:]):
                pairs[x, y] -= f
                touched.add((x, y))
            j, t = 0, []
            while j < len(s):
                if j + 1 < len(s) and s[j] == a and s[j + 1] == b:
                    t.append(a + b)
                    j += 2
                else:
                    t.append(s[j])
                    j += 1
            syms[i] = t
            for x, y in zip(t, t[1:]):
                pairs[x, y] += f
                where[x, y].add(i)
                touched.add((x, y))
        for p in touched:
            if pairs[p] > 0 and p != best:
                heapq.heappush(heap, (-pairs[p], p))
            elif pairs[p] <= 0:
                del pairs[p]
        pairs.pop(best, None)
    return vocab, merges


class Encoder:
    """Encodes as HF's BPE model does: repeatedly apply the lowest-ranked merge in a word."""

    def __init__(self, vocab, merges):
        self.ids = {t: i for i, t in enumerate(vocab)}
        self.rank = {m: r for r, m in enumerate(merges)}
        self.cache = {}

    def word(self, w):
        if w in self.cache:
            return self.cache[w]
        s = list(w)
        while len(s) > 1:
            r, j = min((self.rank.get((s[k], s[k + 1]), 1 << 30), k) for k in range(len(s) - 1))
            if r == 1 << 30:
                break
            s[j:j + 2] = [s[j] + s[j + 1]]
        ids = [self.ids[t] for t in s]
        self.cache[w] = ids
        return ids

    def encode(self, text):
        return [i for p in pieces(text) for i in self.word(p)]


def tokenizer_json(vocab, merges):
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [dict(id=i, content=t, single_word=False, lstrip=False, rstrip=False,
                              normalized=False, special=True) for i, t in enumerate(SPECIALS)],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": SPLIT}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(vocab)},
                  "merges": [a + " " + b for a, b in merges]},
    }


# ---- 3. model ----

class RMSNorm(torch.nn.Module):
    def __init__(self, n, eps):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), -1)


class Layer(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        H, hd = c["hidden_size"], c["head_dim"]
        self.nh, self.nkv, self.hd = c["num_attention_heads"], c["num_key_value_heads"], hd
        lin = lambda i, o: torch.nn.Linear(i, o, bias=False)  # noqa: E731
        self.input_layernorm = RMSNorm(H, c["rms_norm_eps"])
        self.post_attention_layernorm = RMSNorm(H, c["rms_norm_eps"])
        self.q_proj, self.k_proj = lin(H, self.nh * hd), lin(H, self.nkv * hd)
        self.v_proj, self.o_proj = lin(H, self.nkv * hd), lin(self.nh * hd, H)
        self.gate = lin(H, c["num_local_experts"])
        E, I = c["num_local_experts"], c["intermediate_size"]
        self.w1 = torch.nn.ModuleList(lin(H, I) for _ in range(E))
        self.w3 = torch.nn.ModuleList(lin(H, I) for _ in range(E))
        self.w2 = torch.nn.ModuleList(lin(I, H) for _ in range(E))
        self.k = c["num_experts_per_tok"]

    def attention(self, x, cos, sin, mask):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.nh, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.nkv, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.nkv, self.hd).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        # grouped-query attention without copying K and V: each KV head's query heads
        # are stacked along the time axis, one batched matmul per KV head
        rep = self.nh // self.nkv
        q = (q * (1.0 / math.sqrt(self.hd))).reshape(B, self.nkv, rep * T, self.hd)
        a = torch.baddbmm(mask.repeat(rep, 1).expand(B * self.nkv, rep * T, T),
                          q.reshape(B * self.nkv, rep * T, self.hd),
                          k.reshape(B * self.nkv, T, self.hd).transpose(1, 2))
        y = torch.bmm(torch.softmax(a, -1), v.reshape(B * self.nkv, T, self.hd))
        y = y.view(B, self.nh, T, self.hd)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))

    def moe(self, x):
        B, T, H = x.shape
        x = x.reshape(-1, H)
        with torch.autocast("cpu", enabled=False):  # route in float32, as inference does
            probs = torch.softmax(self.gate(x.float()), -1)
        w, idx = probs.topk(self.k, -1)
        w = w / w.sum(-1, keepdim=True)
        out = torch.zeros(x.shape, dtype=torch.float32)
        for e in range(len(self.w1)):
            tok, slot = (idx == e).nonzero(as_tuple=True)
            if tok.numel():
                xe = x[tok]
                ye = self.w2[e](F.silu(self.w1[e](xe)) * self.w3[e](xe))
                out.index_add_(0, tok, ye.float() * w[tok, slot, None])
        # Switch / transformers load-balancing loss: E * sum_e(share of routes_e * mean prob_e)
        share = F.one_hot(idx, probs.shape[-1]).float().mean(0)  # [k, E]
        aux = probs.shape[-1] * (share * probs.mean(0)).sum()
        return out.view(B, T, H), aux

    def forward(self, x, cos, sin, mask):
        x = x + self.attention(self.input_layernorm(x), cos, sin, mask)
        m, aux = self.moe(self.post_attention_layernorm(x))
        return x + m, aux


class Mixtral(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.embed_tokens = torch.nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.layers = torch.nn.ModuleList(Layer(c) for _ in range(c["num_hidden_layers"]))
        self.norm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        self.lm_head = torch.nn.Linear(c["hidden_size"], c["vocab_size"], bias=False)
        std = c["initializer_range"]
        for n, p in self.named_parameters():
            if p.dim() == 2:
                # residual-branch outputs scaled down by depth (GPT-2's rule)
                s = std / math.sqrt(2 * c["num_hidden_layers"]) if ("o_proj" in n or ".w2." in n) else std
                torch.nn.init.normal_(p, 0.0, s)

    def forward(self, ids):
        T = ids.shape[1]
        hd = self.c["head_dim"]
        inv = 1.0 / (self.c["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
        fr = torch.outer(torch.arange(T, dtype=torch.float64), inv)
        emb = torch.cat((fr, fr), -1)
        cos, sin = emb.cos().float(), emb.sin().float()
        mask = torch.full((T, T), float("-inf")).triu(1)
        x = self.embed_tokens(ids)
        aux = 0.0
        for layer in self.layers:
            x, a = layer(x, cos, sin, mask)
            aux = aux + a
        return self.lm_head(self.norm(x)), aux / len(self.layers)

    def hf_tensors(self):
        """transformers' MixtralForCausalLM state-dict names -> float32 numpy arrays"""
        t = {"model.embed_tokens.weight": self.embed_tokens.weight}
        for l, L in enumerate(self.layers):
            p = "model.layers.%d." % l
            t[p + "input_layernorm.weight"] = L.input_layernorm.weight
            for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
                t[p + "self_attn.%s.weight" % n] = getattr(L, n).weight
            t[p + "post_attention_layernorm.weight"] = L.post_attention_layernorm.weight
            t[p + "block_sparse_moe.gate.weight"] = L.gate.weight
            for e in range(len(L.w1)):
                for n in ("w1", "w2", "w3"):
                    t[p + "block_sparse_moe.experts.%d.%s.weight" % (e, n)] = getattr(L, n)[e].weight
        t["model.norm.weight"] = self.norm.weight
        t["lm_head.weight"] = self.lm_head.weight
        return {k: v.detach().float().numpy() for k, v in t.items()}


# ---- 4. export ----

def to_bf16(x):
    """float32 -> bfloat16 bits, round to nearest even"""
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def write_safetensors(path, tensors):
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for name, a in tensors.items():
        b = to_bf16(a).tobytes()
        header[name] = {"dtype": "BF16", "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for b in blobs:
            f.write(b)
    os.replace(path + ".tmp", path)


def write_json(path, obj, indent=2):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent, ensure_ascii=False)
        f.write("\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="models/kjv-moe")
    ap.add_argument("--steps", type=int, default=1600)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=1611)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    # Keep freed tensors' memory in the heap: without this every step maps and faults in
    # its activations again (a third of the time went to the kernel).
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: the most glibc accepts
    libc.mallopt(-1, 1 << 30)   # M_TRIM_THRESHOLD
    libc.mallopt(-2, 256 << 20)  # M_TOP_PAD
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    torch.use_deterministic_algorithms(True)
    os.makedirs(a.out, exist_ok=True)
    t0 = time.time()

    chapters = read_kjv()
    train_txt, held_txt = [], []
    for i, (h, v) in enumerate(chapters):
        (held_txt if i % HELDOUT_EVERY == HELDOUT_FROM else train_txt).append(chapter_text(h, v))
    train_txt, held_txt = "".join(train_txt), "".join(held_txt)
    with open(os.path.join(a.out, "heldout.txt"), "w") as f:
        f.write(held_txt)

    vocab, merges = train_bpe(train_txt, CONFIG["vocab_size"])
    if len(vocab) != CONFIG["vocab_size"]:
        sys.exit("train_demo: BPE stopped at %d ids" % len(vocab))
    enc = Encoder(vocab, merges)
    # one document per chapter: <s> chapter, as the tokenizer's post-processor adds <s>
    train_ids = []
    for i, (h, v) in enumerate(chapters):
        if i % HELDOUT_EVERY != HELDOUT_FROM:
            train_ids += [1] + enc.encode(chapter_text(h, v))
    held_ids = enc.encode(held_txt)
    data = torch.tensor(train_ids, dtype=torch.long)
    print("corpus: %d train / %d held-out chars, %d / %d tokens (%.2f chars per token), %.0f s"
          % (len(train_txt), len(held_txt), len(train_ids), len(held_ids),
             len(train_txt) / len(train_ids), time.time() - t0), flush=True)

    model = Mixtral(CONFIG)
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.dim() == 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(a.seed)
    held = torch.tensor([1] + held_ids, dtype=torch.long)

    def held_loss(n=8):
        model.eval()
        with torch.no_grad():
            L = []
            for j in range(n):
                s = j * (len(held) - a.seq - 1) // n
                x = held[s:s + a.seq + 1].unsqueeze(0)
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    lg, _ = model(x[:, :-1])
                L.append(F.cross_entropy(lg.float().view(-1, lg.shape[-1]), x[:, 1:].reshape(-1)).item())
        model.train()
        return sum(L) / n

    total, warm, log, step = a.steps, 100, [], 0
    while step < total:
        lr = a.lr * min(1.0, (step + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, step / total))))
        for g in opt.param_groups:
            g["lr"] = lr
        starts = torch.randint(0, len(data) - a.seq - 1, (a.batch,), generator=gen)
        x = torch.stack([data[s:s + a.seq + 1] for s in starts.tolist()])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits, aux = model(x[:, :-1])
        ce = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        loss = ce + CONFIG["router_aux_loss_coef"] * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 100 == 0 or step == total:
            entry = dict(step=step, lr=lr, train_ce=ce.item(), aux=float(aux), seconds=round(time.time() - t0))
            if step % 500 == 0 or step == total:
                entry["heldout_ce"] = held_loss()
            log.append(entry)
            print(json.dumps(entry), flush=True)

    tensors = model.hf_tensors()
    write_safetensors(os.path.join(a.out, "model.safetensors"), tensors)
    write_json(os.path.join(a.out, "config.json"), CONFIG)
    write_json(os.path.join(a.out, "generation_config.json"),
               dict(bos_token_id=1, eos_token_id=2, do_sample=True, temperature=0.8, top_p=0.95))
    write_json(os.path.join(a.out, "tokenizer.json"), tokenizer_json(vocab, merges), indent=None)
    write_json(os.path.join(a.out, "tokenizer_config.json"), dict(
        tokenizer_class="PreTrainedTokenizerFast", bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        add_bos_token=True, add_eos_token=False, model_max_length=CONFIG["max_position_embeddings"],
        clean_up_tokenization_spaces=False))
    write_json(os.path.join(a.out, "train_log.json"), dict(
        corpus="bible-kjv-text 4.38 via `bible Ge1:1-Re22:21`",
        heldout="every %dth chapter from chapter index %d" % (HELDOUT_EVERY, HELDOUT_FROM),
        params=n_params, train_tokens=len(train_ids), heldout_tokens=len(held_ids), seed=a.seed,
        threads=a.threads, seq=a.seq, batch=a.batch, steps=total, lr=a.lr,
        seconds=round(time.time() - t0), torch=torch.__version__, log=log))
    print("wrote %s: %d parameters, %.0f s" % (a.out, n_params, time.time() - t0))


if __name__ == "__main__":
    main()
