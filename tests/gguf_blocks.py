"""GGUF's block types in numpy, for the tests: float64 decoders written from
ggml-quants.c's dequantize_row_* (the specification), and simple encoders that make
valid blocks from float weights (round to nearest on scales from the block's range:
not llama.cpp's error-minimizing search, which only changes which codes are chosen).

decode(name, raw, n) -> float64[n]      encode(name, x[rows, cols]) -> bytes
"""
import numpy as np

# name: (weights per block, bytes per block, GGUF type id)
FORMATS = {"q4_1": (32, 20, 3), "q5_0": (32, 22, 6), "q5_1": (32, 24, 7), "q2_k": (256, 84, 10),
           "q3_k": (256, 110, 11), "q4_k": (256, 144, 12), "q5_k": (256, 176, 13), "q6_k": (256, 210, 14),
           "iq4_nl": (32, 18, 20), "iq4_xs": (256, 136, 23), "mxfp4": (32, 17, 39)}
IQ4 = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.float64)
# MXFP4: FP4 E2M1 (sign, 2 exponent bits, 1 mantissa bit) decoded from its bits, not copied
# from a table: 0 0.5 1 1.5 2 3 4 6, code 8 and up negative (the OCP MX specification)
E2M1 = np.array([(-1.0 if c & 8 else 1.0) * ((c & 1) * 0.5 if (c >> 1) & 3 == 0 else
                                             2.0 ** (((c >> 1) & 3) - 1) * (1 + (c & 1) * 0.5)) for c in range(16)])

I = np.arange(256)
CRUMB_BYTE = 32 * (I // 128) + I % 32     # Q2_K/Q3_K: byte of qs holding weight i
CRUMB_SHIFT = 2 * ((I % 128) // 32)       # ... and its bit offset


def _h(b, at):
    return (b[:, at] | b[:, at + 1] << 8).astype(np.uint16).view(np.float16).astype(np.float64)


def _k4_scales(sc):
    """Q4_K/Q5_K: 8 six-bit scales and mins from 12 bytes (get_scale_min_k4)."""
    s = np.zeros((len(sc), 8), np.int64)
    m = np.zeros((len(sc), 8), np.int64)
    for j in range(8):
        if j < 4:
            s[:, j] = sc[:, j] & 63
            m[:, j] = sc[:, j + 4] & 63
        else:
            s[:, j] = (sc[:, j + 4] & 15) | ((sc[:, j - 4] >> 6) << 4)
            m[:, j] = (sc[:, j + 4] >> 4) | ((sc[:, j] >> 6) << 4)
    return s, m


def decode(name, raw, n):
    w, nbytes, _ = FORMATS[name]
    b = np.frombuffer(raw, np.uint8, n // w * nbytes).reshape(-1, nbytes).astype(np.int64)
    if name == "mxfp4":  # {e: E8M0, qs[16]}: w = 2^(e-127) * E2M1[nibble]
        q = np.concatenate([b[:, 1:] & 15, b[:, 1:] >> 4], axis=1)
        return (np.ldexp(1.0, b[:, 0] - 127)[:, None] * E2M1[q]).reshape(-1)
    if w == 32:
        has_m = name in ("q4_1", "q5_1")
        d = _h(b, 0)
        m = _h(b, 2) if has_m else np.zeros(len(b))
        qs = b[:, -16:]
        q = np.concatenate([qs & 15, qs >> 4], axis=1)
        if name == "iq4_nl":
            return (d[:, None] * IQ4[q]).reshape(-1)
        if name in ("q5_0", "q5_1"):
            at = 4 if has_m else 2
            qh = b[:, at] | b[:, at + 1] << 8 | b[:, at + 2] << 16 | b[:, at + 3] << 24
            q = q | (((qh[:, None] >> np.arange(32)) & 1) << 4)
            if name == "q5_0":
                return (d[:, None] * (q - 16)).reshape(-1)
        return (d[:, None] * q + m[:, None]).reshape(-1)
    if name == "q2_k":
        sc, d, dmin = b[:, :16], _h(b, 80), _h(b, 82)
        q = (b[:, 16:80][:, CRUMB_BYTE] >> CRUMB_SHIFT) & 3
        g = I // 16
        return (d[:, None] * (sc[:, g] & 15) * q - dmin[:, None] * (sc[:, g] >> 4)).reshape(-1)
    if name == "q3_k":
        hm, qs, sc, d = b[:, :32], b[:, 32:96], b[:, 96:108], _h(b, 108)
        lo = np.concatenate([sc[:, :8] & 15, sc[:, :8] >> 4], axis=1)
        hi = np.stack([(sc[:, 8 + i % 4] >> (2 * (i // 4))) & 3 for i in range(16)], axis=1)
        scale = (lo | hi << 4) - 32
        q = (qs[:, CRUMB_BYTE] >> CRUMB_SHIFT) & 3
        high = (hm[:, I % 32] >> (I // 32)) & 1
        return (d[:, None] * scale[:, I // 16] * (q - 4 * (1 - high))).reshape(-1)
    if name in ("q4_k", "q5_k"):
        d, dmin = _h(b, 0), _h(b, 2)
        s, m = _k4_scales(b[:, 4:16])
        qs = b[:, 48:176] if name == "q5_k" else b[:, 16:144]
        sub = I // 32
        q = np.where(sub % 2 == 0, qs[:, 32 * (sub // 2) + I % 32] & 15, qs[:, 32 * (sub // 2) + I % 32] >> 4)
        if name == "q5_k":
            q = q + 16 * ((b[:, 16:48][:, I % 32] >> sub) & 1)
        return (d[:, None] * s[:, sub] * q - dmin[:, None] * m[:, sub]).reshape(-1)
    if name == "q6_k":
        ql, qh, sc, d = b[:, :128], b[:, 128:192], b[:, 192:208].astype(np.int8).astype(np.int64), _h(b, 208)
        half, k, l = I // 128, (I % 128) // 32, I % 32
        lo = ql[:, 64 * half + l + 32 * (k % 2)]
        lo = np.where(k < 2, lo & 15, lo >> 4)
        q = lo | ((qh[:, 32 * half + l] >> (2 * k)) & 3) << 4
        return (d[:, None] * sc[:, I // 16] * (q - 32)).reshape(-1)
    if name == "iq4_xs":
        d = _h(b, 0)
        sh = b[:, 2] | b[:, 3] << 8
        ls = np.stack([((b[:, 4 + j // 2] >> (4 * (j % 2))) & 15) | (((sh >> (2 * j)) & 3) << 4) for j in range(8)], 1)
        qs = b[:, 8:].reshape(-1, 8, 16)
        q = np.concatenate([qs & 15, qs >> 4], axis=2).reshape(-1, 256)
        return (d[:, None] * (ls[:, I // 32] - 32) * IQ4[q]).reshape(-1)
    raise ValueError(name)


# ---- encoders ----

def _f16(a):
    return np.asarray(a, np.float64).astype(np.float16)


def _put_f16(out, at, v):
    out[:, at:at + 2] = _f16(v).reshape(-1, 1).view(np.uint8)


def _rnd(x):
    return np.floor(x + 0.5)


def _safe_div(a, b):
    return np.where(b != 0, a / np.where(b != 0, b, 1), 0)


def _nibbles(q):
    """32 codes per row -> 16 bytes: weight j low nibble, j+16 high"""
    return (q[:, :16] | (q[:, 16:32] << 4)).astype(np.uint8)


def encode(name, x):
    w, nbytes, _ = FORMATS[name]
    x = np.asarray(x, np.float64).reshape(-1, w)
    nb = len(x)
    out = np.zeros((nb, nbytes), np.uint8)
    if name == "mxfp4":  # the exponent that puts the block's largest value near 4..6, codes by nearest value
        amax = np.abs(x).max(1)
        e = np.where(amax > 0, np.floor(np.log2(np.where(amax > 0, amax, 1))) - 2 + 127, 0).clip(0, 254)
        out[:, 0] = e.astype(np.uint8)
        q = np.abs(x[:, :, None] - np.ldexp(1.0, e.astype(np.int64) - 127)[:, None, None] * E2M1[None, None, :]).argmin(2)
        out[:, 1:] = _nibbles(q)
        return out.tobytes()
    if name in ("q4_1", "q5_1"):
        bits = 4 if name == "q4_1" else 5
        mn, mx = x.min(1), x.max(1)
        d = _f16((mx - mn) / (2 ** bits - 1)).astype(np.float64)
        m = _f16(mn).astype(np.float64)
        q = np.clip(_rnd(_safe_div(x - m[:, None], d[:, None])), 0, 2 ** bits - 1).astype(np.int64)
        _put_f16(out, 0, d)
        _put_f16(out, 2, m)
        if name == "q4_1":
            out[:, 4:] = _nibbles(q)
        else:
            out[:, 4:8] = _qh(q)
            out[:, 8:] = _nibbles(q & 15)
    elif name in ("q5_0", "iq4_nl"):
        idx = np.abs(x).argmax(1)
        mx = x[np.arange(nb), idx]
        if name == "q5_0":
            d = _f16(mx / -16).astype(np.float64)
            q = np.clip(_rnd(_safe_div(x, d[:, None]) + 16), 0, 31).astype(np.int64)
            _put_f16(out, 0, d)
            out[:, 2:6] = _qh(q)
            out[:, 6:] = _nibbles(q & 15)
        else:
            d = _f16(mx / -127).astype(np.float64)
            q = np.abs(_safe_div(x, d[:, None])[:, :, None] - IQ4).argmin(2)
            _put_f16(out, 0, d)
            out[:, 2:] = _nibbles(q)
    elif name in ("q2_k", "q4_k", "q5_k"):
        sub = 16 if name == "q2_k" else 32
        bits = {"q2_k": 2, "q4_k": 4, "q5_k": 5}[name]
        sbits = 4 if name == "q2_k" else 6
        xs = x.reshape(nb, -1, sub)
        mn = np.minimum(xs.min(2), 0)                       # w = s*q - m, m >= 0
        s = (xs.max(2) - mn) / (2 ** bits - 1)
        d = _f16(s.max(1) / (2 ** sbits - 1)).astype(np.float64)
        dmin = _f16(-mn.min(1) / (2 ** sbits - 1)).astype(np.float64)
        sq = np.clip(_rnd(_safe_div(s, d[:, None])), 0, 2 ** sbits - 1).astype(np.int64)
        mq = np.clip(_rnd(_safe_div(-mn, dmin[:, None])), 0, 2 ** sbits - 1).astype(np.int64)
        scale, off = d[:, None] * sq, dmin[:, None] * mq
        q = np.clip(_rnd(_safe_div(xs + off[:, :, None], scale[:, :, None])), 0, 2 ** bits - 1).astype(np.int64)
        q = q.reshape(nb, 256)
        if name == "q2_k":
            out[:, :16] = (sq | mq << 4).astype(np.uint8)
            _crumbs(out[:, 16:80], q)
            _put_f16(out, 80, d)
            _put_f16(out, 82, dmin)
        else:
            _put_f16(out, 0, d)
            _put_f16(out, 2, dmin)
            sc = out[:, 4:16]
            for j in range(8):
                if j < 4:
                    sc[:, j] = sq[:, j]
                    sc[:, j + 4] = mq[:, j]
                else:
                    sc[:, j + 4] = (sq[:, j] & 15) | ((mq[:, j] & 15) << 4)
                    sc[:, j - 4] |= ((sq[:, j] >> 4) << 6).astype(np.uint8)
                    sc[:, j] |= ((mq[:, j] >> 4) << 6).astype(np.uint8)
            qs = out[:, 48:] if name == "q5_k" else out[:, 16:144]
            for k in range(4):
                qs[:, 32 * k:32 * k + 32] = (q[:, 64 * k:64 * k + 32] & 15) | ((q[:, 64 * k + 32:64 * k + 64] & 15) << 4)
            if name == "q5_k":
                hb = q >> 4
                out[:, 16:48] = sum(hb[:, 32 * j:32 * j + 32] << j for j in range(8)).astype(np.uint8)
    elif name in ("q3_k", "q6_k"):
        half = 4 if name == "q3_k" else 32                  # codes -half .. half-1
        xs = x.reshape(nb, 16, 16)
        idx = np.abs(xs).argmax(2)
        s = np.take_along_axis(xs, idx[:, :, None], 2)[:, :, 0] / -half  # signed, as q4_0
        smax = np.abs(s).max(1)
        lim = 31 if name == "q3_k" else 127
        d = _f16(smax / lim).astype(np.float64)
        sq = np.clip(_rnd(_safe_div(s, d[:, None])), -lim, lim).astype(np.int64)
        scale = d[:, None] * sq
        q = np.clip(_rnd(_safe_div(xs, scale[:, :, None])), -half, half - 1).astype(np.int64).reshape(nb, 256) + half
        if name == "q3_k":
            _crumbs(out[:, 32:96], q & 3)
            hb = q >> 2
            out[:, :32] = sum(hb[:, 32 * j:32 * j + 32] << j for j in range(8)).astype(np.uint8)
            u = sq + 32
            for g in range(16):
                out[:, 96 + g % 8] |= ((u[:, g] & 15) << (4 * (g // 8))).astype(np.uint8)
                out[:, 104 + g % 4] |= (((u[:, g] >> 4) & 3) << (2 * (g // 4))).astype(np.uint8)
            _put_f16(out, 108, d)
        else:
            for hh in range(2):
                for k in range(4):
                    qq = q[:, 128 * hh + 32 * k:128 * hh + 32 * k + 32]
                    lo = out[:, 64 * hh + 32 * (k % 2):64 * hh + 32 * (k % 2) + 32]
                    lo |= (qq & 15).astype(np.uint8) << (4 * (k // 2))
                    out[:, 128 + 32 * hh:160 + 32 * hh] |= ((qq >> 4) << (2 * k)).astype(np.uint8)
            out[:, 192:208] = sq.astype(np.int8).view(np.uint8)
            _put_f16(out, 208, d)
    elif name == "iq4_xs":
        xs = x.reshape(nb, 8, 32)
        idx = np.abs(xs).argmax(2)
        s = np.take_along_axis(xs, idx[:, :, None], 2)[:, :, 0] / -127
        d = _f16(np.abs(s).max(1) / 31).astype(np.float64)
        ls = np.clip(_rnd(_safe_div(s, d[:, None])), -32, 31).astype(np.int64) + 32
        scale = d[:, None] * (ls - 32)
        q = np.abs(_safe_div(xs, scale[:, :, None])[:, :, :, None] - IQ4).argmin(3)
        _put_f16(out, 0, d)
        sh = sum(((ls[:, j] >> 4) & 3) << (2 * j) for j in range(8))
        out[:, 2] = sh & 255
        out[:, 3] = sh >> 8
        for j in range(8):
            out[:, 4 + j // 2] |= ((ls[:, j] & 15) << (4 * (j % 2))).astype(np.uint8)
        out[:, 8:] = _nibbles(q.reshape(-1, 32)).reshape(nb, 128)
    else:
        raise ValueError(name)
    return out.tobytes()


def _qh(q):
    """Q5_0/Q5_1: bit 4 of weight j in bit j of a little-endian uint32"""
    v = sum((q[:, j] >> 4) << j for j in range(32)).astype(np.uint32)
    return v.view(np.uint8).reshape(-1, 4) if v.ndim == 1 else v


def _crumbs(dst, q):
    """Q2_K/Q3_K: 2-bit codes of 256 weights into 64 bytes (see CRUMB_BYTE)"""
    for i in range(4):
        for h in range(2):
            dst[:, 32 * h:32 * h + 32] |= (q[:, 128 * h + 32 * i:128 * h + 32 * i + 32] << (2 * i)).astype(np.uint8)
