"""Reads soft-cluster outputs the way a Python user would, and prints a JSON summary.

    python3 scripts/read_outputs.py MODEL.safetensors MEMBERSHIPS.npz

With numpy and safetensors installed (CI installs them) it uses `safetensors.numpy.load_file`
and `np.load(path, allow_pickle=False)`. Without them it parses both formats with the standard
library only (a plain reader of the formats), so the check runs on any machine with python3."""
import ast, json, struct, sys, zipfile


def plain_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    meta = header.pop("__metadata__", {})
    return meta, {name: {"dtype": t["dtype"], "shape": t["shape"]} for name, t in header.items()}


def plain_npz(path):
    out = {}
    with zipfile.ZipFile(path) as z:
        for name in z.namelist():
            raw = z.read(name)
            assert raw[:6] == b"\x93NUMPY", name
            hlen = struct.unpack("<H", raw[8:10])[0]
            h = ast.literal_eval(raw[10:10 + hlen].decode("latin1"))
            assert not h["fortran_order"] and "O" not in h["descr"], name
            data = raw[10 + hlen:]
            descr, shape = h["descr"], list(h["shape"])
            if descr.startswith("<U"):
                value = data.decode("utf-32-le").rstrip("\0")
            else:
                fmt = {"<i8": "q", "<f4": "f"}[descr]
                count = len(data) // struct.calcsize(fmt)
                value = list(struct.unpack("<%d%s" % (count, fmt), data))
            out[name[:-4]] = {"dtype": descr, "shape": shape, "value": value}
    return out


def main(model_path, memberships_path):
    try:
        import numpy as np
        from safetensors.numpy import load_file
        from safetensors import safe_open
        tensors = load_file(model_path)
        with safe_open(model_path, "np") as f:
            meta = f.metadata()
        tensors = {k: {"dtype": str(v.dtype), "shape": list(v.shape)} for k, v in tensors.items()}
        z = np.load(memberships_path, allow_pickle=False)
        arrays = {k: {"dtype": z[k].dtype.str, "shape": list(z[k].shape)} for k in z.files}
        arrays["metadata"]["value"] = str(z["metadata"][()])
        arrays["values"]["value"] = z["values"].tolist()
        reader = "numpy"
    except ImportError:
        meta, tensors = plain_safetensors(model_path)
        arrays = plain_npz(memberships_path)
        reader = "plain"
    print(json.dumps({"reader": reader, "metadata": meta, "tensors": tensors,
                      "arrays": {k: {kk: vv for kk, vv in v.items() if kk != "value" or k in ("metadata", "values")}
                                 for k, v in arrays.items()}}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
