"""A minimal safetensors writer/reader (BF16 / F32 only), no safetensors library needed.

Layout: 8-byte little-endian header length N, N bytes of JSON header (padded with spaces to a
multiple of 8), then the tensor data, contiguous, in header (offset) order.
"""
import json
import struct

import numpy as np
import torch


def _bf16_bytes(t):
    t = t.detach().to(torch.bfloat16).contiguous().cpu()
    return t.view(torch.int16).numpy().astype('<i2').tobytes()


def write(path, tensors, metadata=None, dtype='BF16'):
    """tensors: {name: torch tensor}; written in sorted-name order (as the safetensors library does)."""
    header = {}
    blobs = []
    off = 0
    for name in sorted(tensors):
        t = tensors[name]
        if dtype == 'BF16':
            b = _bf16_bytes(t)
        else:
            b = t.detach().to(torch.float32).contiguous().cpu().numpy().astype('<f4').tobytes()
        header[name] = {'dtype': dtype, 'shape': list(t.shape), 'data_offsets': [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    if metadata:
        header['__metadata__'] = metadata
    hb = json.dumps(header, separators=(',', ':')).encode('utf-8')
    hb += b' ' * ((8 - len(hb) % 8) % 8)
    with open(path, 'wb') as f:
        f.write(struct.pack('<Q', len(hb)))
        f.write(hb)
        for b in blobs:
            f.write(b)


def read(path):
    """{name: torch tensor} in the stored dtype (bfloat16 or float32)."""
    with open(path, 'rb') as f:
        data = f.read()
    n = struct.unpack('<Q', data[:8])[0]
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, e in header.items():
        if name == '__metadata__':
            continue
        a, b = e['data_offsets']
        raw = data[base + a: base + b]
        if e['dtype'] == 'BF16':
            t = torch.from_numpy(np.frombuffer(raw, dtype='<i2').copy()).view(torch.bfloat16)
        elif e['dtype'] == 'F32':
            t = torch.from_numpy(np.frombuffer(raw, dtype='<f4').copy())
        else:
            raise ValueError(e['dtype'])
        out[name] = t.reshape(e['shape'])
    return out
