"""Read + decode throughput of our chunk readers against the Python reader of each format, on
the same files (issue 14): np.load (.npz, .npy), safetensors.numpy.load_file (.safetensors),
datasets.load_from_disk + to numpy (a SAELens-style Arrow folder). Prints a Markdown table.

    python readers.py READ_BENCH_BINARY [GIB]

Each file holds the same float32 activations [B, 128, 768] (bfloat16 only in safetensors, where
Python has no numpy reader for it: safetensors.numpy refuses BF16). Best of 3 runs each; the
page cache is warm (every file is read once first), so this measures decoding, not the disk.
"""
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

binary = sys.argv[1]
gib = float(sys.argv[2]) if len(sys.argv) > 2 else 0.5
S, D = 128, 768
B = int(gib * (1 << 30) // (S * D * 4))
rng = np.random.default_rng(0)
acts = rng.standard_normal((B, S, D), dtype=np.float32)
ids = rng.integers(0, 30000, (B, S)).astype(np.int64)
tmp = Path(tempfile.mkdtemp(prefix="sc-readers-"))


def best(fn, repeat=3):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def ours(path):
    out = subprocess.run([binary, "--repeat", "3", str(path)], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["seconds"]


rows = []
files = {}
files["npz (stored)"] = tmp / "a.npz"
np.savez(files["npz (stored)"], activations=acts, token_ids=ids)
files["npy"] = tmp / "a.npy"
np.save(files["npy"], acts)
files["safetensors f32"] = tmp / "a.safetensors"
save_file({"activations": acts, "token_ids": ids}, str(files["safetensors f32"]))
python_readers = {
    "npz (stored)": ("np.load", lambda p: np.load(p)["activations"]),
    "npy": ("np.load", lambda p: np.load(p)),
    "safetensors f32": ("safetensors.numpy.load_file", lambda p: load_file(str(p))["activations"]),
}
try:
    from datasets import Array2D, Dataset, Features, Sequence, Value, load_from_disk

    hook = "blocks.3.hook_resid_post"
    features = Features({hook: Array2D(shape=(S, D), dtype="float32"), "token_ids": Sequence(Value("int32"), length=S)})
    folder = tmp / "dataset"
    Dataset.from_dict({hook: acts, "token_ids": ids.astype(np.int32)}, features=features).save_to_disk(str(folder), num_shards=1)
    files["datasets Arrow"] = next(folder.glob("*.arrow"))
    python_readers["datasets Arrow"] = ("datasets.load_from_disk + numpy", lambda p: load_from_disk(str(folder)).with_format("numpy")[:][hook])
except ImportError:
    pass

size = acts.nbytes / 1e9
for name, path in files.items():
    python_readers[name][1](path)  # warm the page cache
    ours_s = ours(path)
    label, fn = python_readers[name]
    theirs_s = best(lambda: fn(path))
    rows.append((name, label, size / ours_s, size / theirs_s, theirs_s / ours_s))

print(f"{B} x {S} x {D} float32 activations ({size:.2f} GB) per file")
print()
print("| format | Python reader | ours GB/s | Python GB/s | ours / Python |")
print("| --- | --- | --- | --- | --- |")
for name, label, a, b, r in rows:
    print(f"| {name} | {label} | {a:.2f} | {b:.2f} | {r:.2f}x |")
