"""Run every command the README and the EXAMPLES of the man pages show.

usage: doc_examples.py SRCDIR BINDIR WORKDIR

Commands are taken from the documents themselves: the README's indented lines that
start with moe-pack, moe-run or moe-bench (or pipe into one), and the .Dl lines of
each man page's EXAMPLES. The files they name (mixtral.moe, qwen3.moe,
Mixtral-8x7B-Instruct-v0.1/, a Q8_0 GGUF, chat.json, ids.txt, ...) are small
synthetic stand-ins made here with the documented shapes' layouts and the real
tokenizers of tests/tokenizers; kjv-q8.moe and models/kjv-moe are the demo model
(its held-out text shortened). Each document runs in its own folder, in order, so a
command can use what an earlier one wrote; an output moe-pack is about to write is
removed first, as each example is written for a fresh folder. What a command shows
as its result in a comment (the ids of a tokenization) is checked too.

Only run time is changed, never behaviour: a full-size synth preset gets a small
hidden size (and shards of 100K instead of 2G), and moe-bench measures for less time.
"""
import os
import re
import shlex
import shutil
import subprocess
import sys

SRC, BIN, WORK = sys.argv[1:4]
TOK = os.path.join(SRC, "tests", "tokenizers")
DEMO = os.path.join(SRC, "models", "kjv-moe")

SMALL = "--hidden 64 --heads 4 --kv-heads 2 --head-dim 16 --expert-ff 128 --dense-ff 128"
REWRITES = [  # (pattern, replacement): run time only
    (r"(--preset (mixtral-8x7b|mixtral-8x22b|qwen3-30b-a3b|qwen3-235b-a22b|deepseek-v3))", r"\1 " + SMALL + " --vocab 512"),
    (r"--shard-size 2G", "--shard-size 100K"),
    (r"^(moe-bench kernels.*)$", r"\1 --seconds 0.01 --reps 1 --memory 64M"),
    (r"^(moe-bench membw.*)$", r"\1 --reps 1 --memory 64M"),
]


def sh(cmd, cwd):
    return subprocess.run(cmd, shell=True, cwd=cwd, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PATH=BIN + os.pathsep + os.environ["PATH"]),
                          executable="/bin/bash", stdin=subprocess.DEVNULL)


def must(cmd, cwd):
    r = sh(cmd, cwd)
    if r.returncode:
        sys.exit(f"making the stand-ins: {cmd}: {r.stderr.strip()}")


def readme_commands(path):
    cmds, joined = [], ""
    for line in open(path, encoding="utf-8"):
        if not line.startswith("    "):
            joined = ""
            continue
        text = joined + line.strip()
        if text.endswith("\\"):
            joined = text[:-1] + " "
            continue
        joined = ""
        if re.match(r"^(echo .*\| *)?moe-(pack|run|bench) ", text):
            cmds.append(text)
    return cmds


def man_commands(path):
    cmds, in_examples = [], False
    for line in open(path, encoding="utf-8"):
        if line.startswith(".Sh"):
            in_examples = line.strip() == ".Sh EXAMPLES"
        elif in_examples and line.startswith(".Dl "):
            text = line[4:].strip()
            for esc, ch in (("\\(dq", '"'), ("\\e", "\\"), ("\\-", "-"), ("\\&", "")):
                text = text.replace(esc, ch)
            cmds.append(text)
    return cmds


def split_comment(cmd):
    """'cmd   # comment' -> (cmd, comment); a # inside a word or quotes stays."""
    m = re.search(r"\s{2,}#\s*(.*)$", cmd)
    return (cmd[:m.start()], m.group(1)) if m else (cmd, "")


def stand_ins(d):
    """The files the documents name, small."""
    q3, mi = os.path.join(TOK, "qwen3", "tokenizer.json"), os.path.join(TOK, "mistral-spm", "tokenizer.json")
    mix = f"--preset mixtral-tiny --hidden 64 --heads 4 --kv-heads 2 --head-dim 16 --expert-ff 128 --vocab 32000"
    must(f"moe-pack synth {mix} --format safetensors Mixtral-8x7B-Instruct-v0.1", d)
    shutil.copy(mi, os.path.join(d, "Mixtral-8x7B-Instruct-v0.1"))
    shutil.copy(os.path.join(TOK, "mistral-spm", "tokenizer_config.json"), os.path.join(d, "Mixtral-8x7B-Instruct-v0.1"))
    for name in ("mixtral-8x7b.Q8_0.gguf", "mixtral-8x7b-instruct.Q8_0.gguf"):
        must(f"moe-pack synth {mix} --format gguf --dtype q8_0 {name}", d)
    for name, q in (("mixtral.moe", "q8"), ("mixtral-q4.moe", "experts=q4,attn=q8")):
        must(f"moe-pack -q {q} --tokenizer {mi} Mixtral-8x7B-Instruct-v0.1 {name}", d)
    for name, q in (("qwen3.moe", "q8"), ("qwen3-q4.moe", "q4")):
        must(f"moe-pack synth --preset qwen3-tiny --hidden 64 --heads 4 --kv-heads 2 --head-dim 16 --expert-ff 64 "
             f"--vocab 151936 -q {q} --tokenizer {q3} {name}", d)
    os.makedirs(os.path.join(d, "qwen3"))
    shutil.copy(q3, os.path.join(d, "qwen3"))
    shutil.copy(q3, d)
    # the demo model with a short held-out text (the full one is demo_model.sh's)
    os.makedirs(os.path.join(d, "models", "kjv-moe"))
    for f in os.listdir(DEMO):
        if f != "heldout.txt":
            os.symlink(os.path.join(DEMO, f), os.path.join(d, "models", "kjv-moe", f))
    held = open(os.path.join(DEMO, "heldout.txt"), encoding="utf-8").read()[:6000]
    for p in ("models/kjv-moe/heldout.txt", "heldout.txt"):
        open(os.path.join(d, p), "w", encoding="utf-8").write(held)
    must("moe-pack -q q8 models/kjv-moe kjv-q8.moe", d)
    must("moe-pack -q f32 models/kjv-moe model-f32.moe", d)
    must("moe-pack -q q4 models/kjv-moe model-q4.moe", d)
    open(os.path.join(d, "chat.txt"), "w").write("Write one line about the sea.\n")
    open(os.path.join(d, "chat.json"), "w").write(
        '[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},'
        ' {"role": "user", "content": "A fact about the sea?"}]')
    open(os.path.join(d, "ids.txt"), "w").write(",".join(str(1 + i * 7 % 31999) for i in range(2500)))


def main():
    docs = [("README.md", readme_commands(os.path.join(SRC, "README.md")))]
    for page in sorted(os.listdir(os.path.join(SRC, "man"))):
        docs.append((page, man_commands(os.path.join(SRC, "man", page))))
    base = os.path.join(WORK, "stand-ins")
    os.makedirs(base)
    stand_ins(base)
    n = failed = 0
    for doc, cmds in docs:
        d = os.path.join(WORK, doc)
        shutil.copytree(base, d, symlinks=True)
        for cmd in cmds:
            cmd, comment = split_comment(cmd)
            run = cmd
            for pat, rep in REWRITES:
                run = re.sub(pat, rep, run)
            words = shlex.split(run.split("|")[-1])
            if words[0] == "moe-pack" and not {"--info", "--verify", "--list-presets"} & set(words):
                out = os.path.join(d, words[-1])
                if os.path.isdir(out) and not os.path.islink(out):
                    shutil.rmtree(out)
                elif os.path.lexists(out):
                    os.remove(out)
            r = sh(run, d)
            n += 1
            bad = f"exit {r.returncode}: {r.stderr.strip()[-300:]}" if r.returncode else ""
            shown = re.match(r"(\[[0-9, ]*\])", comment)  # a result the document shows
            if not bad and shown and r.stdout.strip() != shown.group(1):
                bad = f"printed {r.stdout.strip()!r}, the document shows {shown.group(1)}"
            print(f"{'FAILED' if bad else 'ok'}  {doc}: {cmd}" + (f"\n        ran: {run}\n        {bad}" if bad else ""))
            failed += bool(bad)
    print(f"{n} documented commands, {failed} failed")
    if n < 50:  # the extraction itself must not silently lose the examples
        sys.exit(f"only {n} commands found in the documents")
    sys.exit(1 if failed else 0)


main()
