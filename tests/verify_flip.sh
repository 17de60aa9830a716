#!/bin/sh
# A single flipped byte in any expert blob (raw or zstd) is caught by --verify,
# which exits non-zero naming the layer and the expert.
. "$TESTS_DIR/lib.sh"
cd "$WORK"
# q8 experts of a low-entropy model compress: both codecs get exercised
# q8 codes of random weights do not compress (raw blobs); f32 ones do (zstd frames)
check "synth raw" "$MOE_PACK" synth --no-progress --preset qwen3-tiny raw.moe
check "synth zstd" "$MOE_PACK" synth --no-progress --preset qwen3-tiny -q experts=f32 --zstd-min-saving 1 zstd.moe
check "clean verify" "$MOE_PACK" --verify raw.moe
cat >flip.py <<'PY'
import random, shutil, struct, subprocess, sys
moe_pack, path, want_codec = sys.argv[1], sys.argv[2], int(sys.argv[3])
d = open(path, "rb").read()
nsec = struct.unpack_from("<I", d, 20)[0]
secs = {struct.unpack_from("<I", d, 32 + 32 * i)[0]: struct.unpack_from("<QQ", d, 32 + 32 * i + 8) for i in range(nsec)}
off = secs[3][0]
count = struct.unpack_from("<I", d, off)[0]
rnd = random.Random(5)
codecs = set()
bad = 0
for i in range(count):
    layer, e, eoff, stored, codec = struct.unpack_from("<IIQQI", d, off + 136 + 48 * i)
    codecs.add(codec)
    pos = eoff + rnd.randrange(stored)
    b = bytearray(d)
    b[pos] ^= 1 << rnd.randrange(8)
    open("flip.moe", "wb").write(b)
    r = subprocess.run([moe_pack, "--verify", "flip.moe"], capture_output=True, text=True)
    want = "layer %d expert %d" % (layer, e)
    if r.returncode == 0 or want not in r.stderr or r.returncode >= 128:
        print("flip in %s at %d not reported: %d %s" % (want, pos, r.returncode, r.stderr), file=sys.stderr)
        bad += 1
assert want_codec in codecs, "no blob with codec %d in %s" % (want_codec, path)
print("%d experts, %d flips missed" % (count, bad))
sys.exit(1 if bad else 0)
PY
check "every raw blob" py flip.py "$MOE_PACK" raw.moe 0
check "every zstd blob" py flip.py "$MOE_PACK" zstd.moe 1
finish
