"""Read + decode throughput of our chunk readers against the Python reader of each format, on
the same files (issue 14): np.load (.npz, .npy), safetensors.numpy.load_file (.safetensors),
datasets.load_from_disk + to numpy (a SAELens-style Arrow folder); then a whole fit of each file
(fit-bench: K = 64, 2 iterations + the output pass, CPU) in tokens/s. Prints two Markdown tables.

    python readers.py READ_BENCH_BINARY FIT_BENCH_BINARY [GIB]

Each file holds the same float32 activations [B, 128, 768] (bfloat16 only in safetensors, where
Python has no numpy reader for it: safetensors.numpy refuses BF16). Best of 3 runs each; the
page cache is warm (every file is read once first), so this measures decoding, not the disk.
"""
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

binary, fit_binary = sys.argv[1], sys.argv[2]
gib = float(sys.argv[3]) if len(sys.argv) > 3 else 0.5
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
    line = json.loads(out.strip().splitlines()[-1])
    return line["seconds"], line["bytes"]


rows = []
files = {}
files["npz (stored)"] = tmp / "a.npz"
np.savez(files["npz (stored)"], activations=acts, token_ids=ids)
files["npy"] = tmp / "a.npy"
np.save(files["npy"], acts)
files["safetensors f32"] = tmp / "a.safetensors"
save_file({"activations": acts, "token_ids": ids}, str(files["safetensors f32"]))
# bfloat16 as PyTorch stores it (safetensors.torch.save_file): written by hand here, since neither
# numpy nor safetensors.numpy has the dtype; the values are the float32 ones rounded to nearest even.
files["safetensors bf16"] = tmp / "bf16.safetensors"
bits = acts.view(np.uint32)
bf16 = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
header = json.dumps({"activations": {"dtype": "BF16", "shape": list(acts.shape), "data_offsets": [0, bf16.nbytes]}}).encode()
header += b" " * (-len(header) % 8)
with open(files["safetensors bf16"], "wb") as f:
    f.write(len(header).to_bytes(8, "little") + header)
    bf16.tofile(f)
python_readers = {
    "npz (stored)": ("np.load", lambda p: np.load(p)["activations"]),
    "npy": ("np.load", lambda p: np.load(p)),
    "safetensors f32": ("safetensors.numpy.load_file", lambda p: load_file(str(p))["activations"]),
    "safetensors bf16": ("none (numpy has no bfloat16)", None),
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
    label, fn = python_readers[name]
    path.read_bytes()  # warm the page cache
    ours_s, ours_bytes = ours(path)  # the activations in their stored dtype: half for bf16
    theirs_s = best(lambda: fn(path)) if fn else None
    rows.append((name, label, ours_bytes / 1e9 / ours_s, theirs_s and size / theirs_s, theirs_s and theirs_s / ours_s))


def fit(n, path):
    """tokens/s of a whole fit of the one file, reading it every pass (--cache off)."""
    folder = tmp / f"fit-{n}"
    folder.mkdir()
    (folder / path.name).symlink_to(path)
    args = ["--chunks", str(folder), "--clusters", "64", "--iterations", "2", "--temperature", "auto", "--min-membership", "0.01", "--cache", "off", "--out", str(tmp / f"out-{n}")]
    run = subprocess.run([fit_binary, *args], capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"fit-bench failed on {path}: {run.stderr.strip()}")
    return json.loads(run.stdout.strip().splitlines()[-1])["tokens_per_s"]


fits = [(name, fit(n, path)) for n, (name, path) in enumerate(files.items())]

shutil.rmtree(tmp)
print(f"{B} x {S} x {D} float32 activations ({size:.2f} GB) per file")
print()
print("| format | Python reader | ours GB/s | Python GB/s | ours / Python |")
print("| --- | --- | --- | --- | --- |")
for name, label, a, b, r in rows:
    print(f"| {name} | {label} | {a:.2f} | " + (f"{b:.2f} | {r:.2f}x |" if b else "- | - |"))
print()
print("| format | fit tokens/s (K = 64, 3 passes, files read every pass) | / npz |")
print("| --- | --- | --- |")
for name, tps in fits:
    print(f"| {name} | {tps:,.0f} | {tps / fits[0][1]:.2f}x |")
