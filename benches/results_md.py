"""The one writer of benches/RESULTS.md: each benchmark owns a block between HTML comments."""
import os
import re


def replace_block(results_path, name, block):
    """Puts `block` (which starts with `<!-- name:start -->` and ends with `<!-- name:end -->`) in
    place of the file's block of that name, or appends it; prints it."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = open(results_path).read() if os.path.exists(results_path) else "# Benchmark results\n"
    if start in text:
        text = re.sub(re.escape(start) + ".*" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    open(results_path, "w").write(text)
    print(block)
