"""Writes one large bfloat16 safetensors shard (`activations` [B, S, D]) without holding it in
memory: the header by hand (safetensors' layout: an 8-byte length, the JSON header, the data),
then the data in slices. Used to check that a shard larger than memory is fitted with bounded
memory (benches/RESULTS.md "Large shards").

    python make_big_shard.py OUT.safetensors GIB [D] [S]
"""
import json
import struct
import sys

import numpy as np

out, gib = sys.argv[1], float(sys.argv[2])
d = int(sys.argv[3]) if len(sys.argv) > 3 else 768
s = int(sys.argv[4]) if len(sys.argv) > 4 else 128
b = int(gib * (1 << 30) // (s * d * 2))
header = json.dumps({"activations": {"dtype": "BF16", "shape": [b, s, d], "data_offsets": [0, b * s * d * 2]}}).encode()
header += b" " * (-len(header) % 8)
rng = np.random.default_rng(0)
centers = rng.standard_normal((64, d)).astype(np.float32)
with open(out, "wb") as f:
    f.write(struct.pack("<Q", len(header)))
    f.write(header)
    for start in range(0, b, 256):
        n = min(256, b - start)
        # Tokens around 64 directions, so the fit has structure to find.
        x = centers[rng.integers(0, 64, n * s)] + 0.5 * rng.standard_normal((n * s, d)).astype(np.float32)
        f.write((x.view(np.uint32) >> 16).astype(np.uint16).tobytes())
print(f"{out}: [{b}, {s}, {d}] bfloat16, {b * s * d * 2 / (1 << 30):.2f} GiB")
