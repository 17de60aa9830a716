"""RMS error of packs' weights against a float pack of the same model, for
bench/kquant_quality.sh: every 2-D tensor and every expert matrix, decoded by the
tests' independent numpy decoders (tests/moepack_ref.py, tests/gguf_blocks.py).

usage: quant_rms.py REFERENCE.moe LABEL=PACK.moe ...   (packs made with --zstd-min-saving 100)
prints one markdown row per pack: RMS error of the experts, of the dense matrices,
each relative to the reference's RMS, and the experts' types.
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import moepack_ref as ref  # noqa: E402


def errors(base, p):
    se = [0.0, 0.0]  # squared error: experts, dense
    ss = [0.0, 0.0]  # squared reference
    for name, t in base.tensors.items():
        if len(t["dims"]) != 2:
            continue
        a, b = base.tensor(name), p.tensor(name)
        se[1] += ((a - b) ** 2).sum()
        ss[1] += (a ** 2).sum()
    types = set()
    for (layer, e) in base.experts:
        for m in range(3):
            a, b = base.expert(layer, e, m), p.expert(layer, e, m)
            se[0] += ((a - b) ** 2).sum()
            ss[0] += (a ** 2).sum()
            types.add(p.expert_layout(layer, e)["matrices"][m]["type"])
    return np.sqrt(se[0] / ss[0]), np.sqrt(se[1] / ss[1]), "/".join(sorted(types))


def main():
    base = ref.Pack(sys.argv[1])
    for arg in sys.argv[2:]:
        label, path = arg.split("=", 1)
        ex, dense, types = errors(base, ref.Pack(path))
        print("| %s | %s | %.5f | %.5f |" % (label, types, ex, dense))


if __name__ == "__main__":
    main()
