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
