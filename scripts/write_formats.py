"""Writes one .npz chunk's activations in the other formats soft-cluster reads, with the real
Python libraries a user would use (issue 14's tests): safetensors (safetensors.numpy, the
activations in float32, the mask and the token ids) and .npy (numpy.save, activations only).

    python write_formats.py CHUNK.npz OUT_DIR
"""
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

chunk, out = Path(sys.argv[1]), Path(sys.argv[2])
with np.load(chunk, allow_pickle=False) as z:
    acts = np.ascontiguousarray(z["activations"])
    tensors = {"activations": acts}
    if "attention_mask" in z:
        tensors["attention_mask"] = np.ascontiguousarray(z["attention_mask"]).astype(bool)
    if "token_ids" in z:
        tensors["token_ids"] = np.ascontiguousarray(z["token_ids"]).astype(np.int64)
save_file(tensors, str(out / f"{chunk.stem}.safetensors"))
# A hook-named copy, as SAELens-style dumps name their tensors.
save_file({"blocks.3.hook_resid_post": acts}, str(out / f"{chunk.stem}_hook.safetensors"))
np.save(out / f"{chunk.stem}.npy", acts)

# A Hugging Face datasets folder as SAELens's CacheActivationsRunner writes it (save_to_disk,
# features Array2D [S, D] float32 named after the hook, token_ids a fixed-length int32 sequence),
# in two shards. Skipped where `datasets` is not installed.
try:
    from datasets import Array2D, Dataset, Features, Sequence, Value
except ImportError:
    sys.exit(0)
b, s, d = acts.shape
hook = "blocks.3.hook_resid_post"
features = Features({hook: Array2D(shape=(s, d), dtype="float32"), "token_ids": Sequence(Value("int32"), length=s)})
ids = tensors.get("token_ids", np.zeros((b, s), dtype=np.int64)).astype(np.int32)
dataset = Dataset.from_dict({hook: acts.astype(np.float32), "token_ids": ids}, features=features)
dataset.save_to_disk(str(out / f"{chunk.stem}_dataset"), num_shards=2)
