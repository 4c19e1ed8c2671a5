#!/usr/bin/env python3
"""A BF16/F16/F32 GGUF -> the same GGUF with its weight matrices in llama.cpp's Q8_0.

The speed anchor for dsv2's 8-bit weights (`Model.load(dir, {weights: 'int8'})`): llama.cpp's
Q8_0 on the same checkpoint (../shared/peers/llama-cpp converts checkpoints to BF16/F16 GGUF
only, and node-llama-cpp ships no llama-quantize). Written from the GGUF v3 layout and ggml's
Q8_0 block definition: 32 weights per block, an f16 scale d = amax / 127 and 32 int8 codes
q = round(w / d) (ggml's reference quantizer rounds half away from zero), 34 bytes a block.
Every tensor of rank >= 2 whose first dimension (ne0) is a multiple of 32 is quantised — as
`llama-quantize ... Q8_0` does for this architecture, token embedding included; 1-D tensors
(norms, biases) and the router (F32 in the source) keep their type. general.file_type becomes
7 (MOSTLY_Q8_0).

    python3 scripts/bench/gguf_q8.py IN.gguf OUT.gguf      (numpy only; streams one tensor at a time)
"""
import struct
import sys

import numpy as np

ALIGN_KEY = "general.alignment"
G_F32, G_F16, G_Q8_0, G_BF16 = 0, 1, 8, 30
SIZE = {G_F32: 4, G_F16: 2, G_BF16: 2}
T_U8, T_I8, T_U16, T_I16, T_U32, T_I32, T_F32, T_BOOL, T_STR, T_ARR, T_U64, T_I64, T_F64 = range(13)
SCALAR = {T_U8: "<B", T_I8: "<b", T_U16: "<H", T_I16: "<h", T_U32: "<I", T_I32: "<i", T_F32: "<f", T_BOOL: "<?",
          T_U64: "<Q", T_I64: "<q", T_F64: "<d"}


class Reader:
    def __init__(self, buf):
        self.b = buf
        self.p = 0

    def take(self, fmt):
        v = struct.unpack_from(fmt, self.b, self.p)
        self.p += struct.calcsize(fmt)
        return v[0] if len(v) == 1 else v

    def string(self):
        n = self.take("<Q")
        s = bytes(self.b[self.p:self.p + n]).decode("utf-8")
        self.p += n
        return s

    def skip_value(self, t):
        if t == T_STR:
            self.string()
        elif t == T_ARR:
            at, n = self.take("<I"), self.take("<Q")
            if at in SCALAR:
                self.p += struct.calcsize(SCALAR[at]) * n
            else:
                for _ in range(n):
                    self.skip_value(at)
        else:
            self.p += struct.calcsize(SCALAR[t])


def to_f32(gtype, raw):
    if gtype == G_F32:
        return raw.view(np.float32)
    if gtype == G_F16:
        return raw.view(np.float16).astype(np.float32)
    return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)


def q8_0(w):
    """Rows of f32 (last dim % 32 == 0) -> Q8_0 bytes, block by block."""
    blocks = w.reshape(-1, 32).astype(np.float32)
    amax = np.abs(blocks).max(axis=1)
    d = amax / 127.0
    inv = np.where(d > 0, 1.0 / np.where(d > 0, d, 1.0), 0.0)
    q = np.clip(np.trunc(blocks * inv[:, None] + np.copysign(0.5, blocks)), -127, 127).astype(np.int8)
    out = np.empty((blocks.shape[0], 34), dtype=np.uint8)
    out[:, 0:2] = d.astype(np.float16).view(np.uint8).reshape(-1, 2)
    out[:, 2:] = q.view(np.uint8)
    return out


def main(src, dst):
    data = np.memmap(src, dtype=np.uint8, mode="r")
    r = Reader(data)
    magic = bytes(data[:4])
    if magic != b"GGUF":
        raise SystemExit(f"{src}: not a GGUF file")
    r.p = 4
    version, n_t, n_kv = r.take("<I"), r.take("<Q"), r.take("<Q")
    if version != 3:
        raise SystemExit(f"{src}: GGUF version {version}, expected 3")
    kv_start = r.p
    align = 32
    kvs = []  # (key, start, end, type) of each raw key/value record
    for _ in range(n_kv):
        s = r.p
        key = r.string()
        t = r.take("<I")
        vpos = r.p
        r.skip_value(t)
        kvs.append((key, s, r.p, t, vpos))
        if key == ALIGN_KEY:
            align = struct.unpack_from("<I", data, vpos)[0]
    infos = []
    for _ in range(n_t):
        name = r.string()
        nd = r.take("<I")
        ne = [r.take("<Q") for _ in range(nd)]
        gtype, off = r.take("<I"), r.take("<Q")
        infos.append((name, ne, gtype, off))
    data_start = (r.p + align - 1) // align * align
    del kv_start

    out_infos = []
    offset = 0
    for name, ne, gtype, off in infos:
        n = int(np.prod(ne))
        quant = len(ne) >= 2 and ne[0] % 32 == 0 and gtype in (G_BF16, G_F16)
        nt = G_Q8_0 if quant else gtype
        nbytes = n // 32 * 34 if quant else n * SIZE[gtype]
        out_infos.append((name, ne, gtype, off, nt, offset, nbytes, n))
        offset += (nbytes + align - 1) // align * align

    with open(dst, "wb") as f:
        f.write(b"GGUF" + struct.pack("<IQQ", 3, n_t, n_kv))
        for key, s, e, t, vpos in kvs:
            if key == "general.file_type":
                f.write(bytes(data[s:vpos]) + struct.pack(SCALAR[t], 7))
            else:
                f.write(bytes(data[s:e]))
        for name, ne, _, _, nt, noff, _, _ in out_infos:
            nb = name.encode()
            f.write(struct.pack("<Q", len(nb)) + nb + struct.pack("<I", len(ne)) + struct.pack(f"<{len(ne)}Q", *ne)
                    + struct.pack("<IQ", nt, noff))
        f.write(b"\0" * ((align - f.tell() % align) % align))
        base = f.tell()
        for name, ne, gtype, off, nt, noff, nbytes, n in out_infos:
            assert f.tell() == base + noff, name
            raw = data[data_start + off:data_start + off + n * SIZE[gtype]]
            if nt == G_Q8_0:
                rows = ne[0]
                step = max(1, (1 << 24) // rows)  # about 16 M elements at a time
                total_rows = n // rows
                for r0 in range(0, total_rows, step):
                    r1 = min(total_rows, r0 + step)
                    part = raw[r0 * rows * SIZE[gtype]:r1 * rows * SIZE[gtype]]
                    f.write(q8_0(to_f32(gtype, np.ascontiguousarray(part))).tobytes())
            else:
                f.write(bytes(raw))
            f.write(b"\0" * ((align - nbytes % align) % align))
    print(f"wrote {dst}: {sum(1 for i in out_infos if i[4] == G_Q8_0)} of {n_t} tensors in Q8_0, {(base + offset) / 1e9:.3f} GB",
          file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2])
