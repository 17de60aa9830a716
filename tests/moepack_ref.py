"""Independent reference for the tests: reads a moemap pack from moepack(5) alone
(numpy, no libmoe), and the GGUF Q8_0/Q4_0 and FP8 E4M3 arithmetic in float64
(GGUF's other block types: gguf_blocks.py)."""
import os
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gguf_blocks  # noqa: E402

TYPES = {0: "f32", 1: "f16", 2: "bf16", 3: "q8", 4: "q4", 5: "q4_1", 6: "q5_0", 7: "q5_1", 8: "q2_k", 9: "q3_k",
         10: "q4_k", 11: "q5_k", 12: "q6_k", 13: "iq4_nl", 14: "iq4_xs", 15: "mxfp4"}


def _bf16_to_f64(u16):
    return (u16.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def dequant(tname, raw, rows, cols):
    """Bytes of one matrix in pack layout -> float64 [rows, cols]."""
    n = rows * cols
    if tname == "f32":
        return np.frombuffer(raw, np.float32, n).astype(np.float64).reshape(rows, cols)
    if tname == "f16":
        return np.frombuffer(raw, np.float16, n).astype(np.float64).reshape(rows, cols)
    if tname == "bf16":
        return _bf16_to_f64(np.frombuffer(raw, np.uint16, n)).reshape(rows, cols)
    if tname in gguf_blocks.FORMATS:  # GGUF's blocks as they are, row after row
        return gguf_blocks.decode(tname, raw, n).reshape(rows, cols)
    nb = n // 32
    if tname == "q8":
        codes = np.frombuffer(raw, np.int8, n).astype(np.float64).reshape(nb, 32)
        d = np.frombuffer(raw, np.float16, nb, offset=n).astype(np.float64)
    else:
        packed = np.frombuffer(raw, np.uint8, n // 2).reshape(nb, 16)
        codes = np.concatenate([packed & 15, packed >> 4], axis=1).astype(np.float64) - 8
        d = np.frombuffer(raw, np.float16, nb, offset=n // 2).astype(np.float64)
    return (codes * d[:, None]).reshape(rows, cols)


def split_codes(tname, raw, rows, cols):
    """(codes bytes, scales as uint16) of a q8/q4 matrix in pack layout."""
    cb = rows * cols if tname == "q8" else rows * cols // 2
    return raw[:cb], np.frombuffer(raw, np.uint16, rows * cols // 32, offset=cb)


def matrix_bytes(tname, rows, cols):
    n = rows * cols
    if tname in gguf_blocks.FORMATS:
        w, nbytes, _ = gguf_blocks.FORMATS[tname]
        return n // w * nbytes
    return {"f32": 4 * n, "f16": 2 * n, "bf16": 2 * n, "q8": n + n // 16, "q4": n // 2 + n // 16}[tname]


class Pack:
    def __init__(self, path):
        self.data = open(path, "rb").read()
        d = self.data
        assert d[:8] == b"MOEPACK\0", "magic"
        self.major, self.minor, self.flags, self.alignment, nsec, self.file_size = struct.unpack_from("<HHIIIQ", d, 8)
        assert self.file_size == len(d)
        self.sections = {}
        for i in range(nsec):
            kind, _, off, size, xx = struct.unpack_from("<IIQQQ", d, 32 + 32 * i)
            self.sections[kind] = (off, size)
        foot = d[-32:]
        assert foot[:8] == b"MOEPEND\0"
        assert struct.unpack_from("<Q", foot, 8)[0] == struct.unpack_from("<Q", d, 504)[0]
        self.meta = self._meta()
        self.tensors = self._tensors()
        self.layout, self.experts = self._experts()

    def _meta(self):
        off, size = self.sections[1]
        d = self.data
        count = struct.unpack_from("<I", d, off)[0]
        p = off + 8
        out = {}
        for _ in range(count):
            klen, typ = struct.unpack_from("<HB", d, p)
            key = d[p + 4:p + 4 + klen].decode()
            p += 4 + klen
            if typ in (1, 2, 3):
                out[key] = struct.unpack_from({1: "<Q", 2: "<q", 3: "<d"}[typ], d, p)[0]
                p += 8
            else:
                n = struct.unpack_from("<Q", d, p)[0]
                p += 8
                if typ == 6:
                    out[key] = list(struct.unpack_from("<%dq" % n, d, p))
                    p += 8 * n
                else:
                    raw = d[p:p + n]
                    out[key] = raw.decode() if typ == 4 else raw
                    p += n
        return out

    def _tensors(self):
        off, size = self.sections[2]
        d = self.data
        count = struct.unpack_from("<I", d, off)[0]
        p = off + 8
        out = {}
        for _ in range(count):
            nlen, typ, nd, _, d0, d1, toff, tsize, xx = struct.unpack_from("<HBBIQQQQQ", d, p)
            name = d[p + 48:p + 48 + nlen].decode()
            p += 48 + (nlen + 7) // 8 * 8
            assert toff % 64 == 0, name
            out[name] = dict(type=TYPES[typ], dims=(d0, d1) if nd == 2 else (d0,), offset=toff, size=tsize)
        return out

    def _experts(self):
        off, size = self.sections[3]
        d = self.data
        count, nmat = struct.unpack_from("<II", d, off)
        mats = []
        for m in range(3):
            typ, _, rows, cols, moff, msize = struct.unpack_from("<IIQQQQ", d, off + 8 + 40 * m)
            mats.append(dict(type=TYPES[typ], rows=rows, cols=cols, offset=moff, size=msize))
        raw_size = struct.unpack_from("<Q", d, off + 128)[0]
        experts = {}
        for i in range(count):
            layer, e, eoff, stored, codec, layout, xs, xr = struct.unpack_from("<IIQQIIQQ", d, off + 136 + 48 * i)
            assert eoff % self.alignment == 0
            experts[(layer, e)] = dict(offset=eoff, stored=stored, codec=codec, layout=layout)
        layouts = [dict(matrices=mats, raw_size=raw_size)]
        if self.flags & 0x10000:  # PACK_F_LAYOUTS: more layouts after the records
            p = off + 136 + 48 * count
            extra = struct.unpack_from("<I", d, p)[0]
            for k in range(extra):
                q = p + 8 + 128 * k
                ms = []
                for m in range(3):
                    typ, _, rows, cols, moff, msize = struct.unpack_from("<IIQQQQ", d, q + 40 * m)
                    ms.append(dict(type=TYPES[typ], rows=rows, cols=cols, offset=moff, size=msize))
                layouts.append(dict(matrices=ms, raw_size=struct.unpack_from("<Q", d, q + 120)[0]))
        self.layouts = layouts
        return layouts[0], experts

    def tensor_bytes(self, name):
        t = self.tensors[name]
        return self.data[t["offset"]:t["offset"] + t["size"]]

    def tensor(self, name):
        t = self.tensors[name]
        rows, cols = (t["dims"][0], t["dims"][1]) if len(t["dims"]) == 2 else (1, t["dims"][0])
        a = dequant(t["type"], self.tensor_bytes(name), rows, cols)
        return a if len(t["dims"]) == 2 else a[0]

    def expert_raw(self, layer, e):
        x = self.experts[(layer, e)]
        assert x["codec"] == 0, "reference reader handles raw blobs only (pack with --zstd-min-saving 100)"
        return self.data[x["offset"]:x["offset"] + x["stored"]]

    def expert_layout(self, layer, e):
        return self.layouts[self.experts[(layer, e)]["layout"]]

    def expert_matrix_bytes(self, layer, e, m):
        mm = self.expert_layout(layer, e)["matrices"][m]
        raw = self.expert_raw(layer, e)
        return raw[mm["offset"]:mm["offset"] + mm["size"]]

    def expert(self, layer, e, m):
        mm = self.expert_layout(layer, e)["matrices"][m]
        return dequant(mm["type"], self.expert_matrix_bytes(layer, e, m), mm["rows"], mm["cols"])


# ---- GGUF Q8_0 / Q4_0 in float64 (llama.cpp's reference algorithm) ----

def q8_0_quantize(x):
    """x [rows, cols] -> (int8 codes [rows, cols], fp16 scales [rows, cols/32])"""
    b = x.reshape(-1, 32).astype(np.float64)
    amax = np.abs(b).max(axis=1)
    d = amax / 127.0
    idv = np.where(d != 0, 1.0 / np.where(d != 0, d, 1), 0)
    v = b * idv[:, None]
    q = np.sign(v) * np.floor(np.abs(v) + 0.5)  # roundf: halves away from zero
    return q.astype(np.int8).reshape(x.shape), d.astype(np.float16).reshape(x.shape[0], -1)


def q4_0_quantize(x):
    b = x.reshape(-1, 32).astype(np.float64)
    idx = np.abs(b).argmax(axis=1)
    mx = b[np.arange(len(b)), idx]
    d = mx / -8.0
    idv = np.where(d != 0, 1.0 / np.where(d != 0, d, 1), 0)
    q = np.minimum(15, np.trunc(b * idv[:, None] + 8.5)).astype(np.uint8)
    return q.reshape(x.shape), d.astype(np.float16).reshape(x.shape[0], -1)


def q_dequant(q, d, kind):
    rows, cols = q.shape
    qq = q.astype(np.float64) - (8 if kind == "q4" else 0)
    return (qq.reshape(-1, 32) * d.reshape(-1).astype(np.float64)[:, None]).reshape(rows, cols)


def gguf_q8_0_blocks(q, d):
    out = bytearray()
    for qb, db in zip(q.reshape(-1, 32), d.reshape(-1)):
        out += np.float16(db).tobytes() + qb.astype(np.int8).tobytes()
    return bytes(out)


def gguf_q4_0_blocks(q, d):
    out = bytearray()
    for qb, db in zip(q.reshape(-1, 32), d.reshape(-1)):
        packed = (qb[:16] | (qb[16:] << 4)).astype(np.uint8)
        out += np.float16(db).tobytes() + packed.tobytes()
    return bytes(out)


# ---- FP8 E4M3 ----

def fp8_table():
    v = np.zeros(256)
    for c in range(256):
        s = -1.0 if c & 0x80 else 1.0
        e = (c >> 3) & 15
        m = c & 7
        if e == 15 and m == 7:
            v[c] = np.nan
        elif e == 0:
            v[c] = s * m / 8.0 * 2.0 ** -6
        else:
            v[c] = s * (1 + m / 8.0) * 2.0 ** (e - 7)
    return v


def fp8_encode(x):
    """nearest E4M3 code (ties to even code), saturating at 448"""
    t = fp8_table()
    ok = ~np.isnan(t)
    codes = np.arange(256)[ok]
    vals = t[ok]
    flat = np.clip(x.reshape(-1), -448, 448)
    dist = np.abs(flat[:, None] - vals[None, :])
    best = dist.min(axis=1, keepdims=True)
    cand = np.where(dist == best, codes[None, :], 10 ** 6)
    # among equal distances prefer an even mantissa, then the positive zero
    even = np.where((cand % 2 == 0) & (cand < 10 ** 6), cand, 10 ** 6).min(axis=1)
    anyc = cand.min(axis=1)
    return np.where(even < 10 ** 6, even, anyc).astype(np.uint8).reshape(x.shape)
