# Sourced by the benchmark runners: `ensure_pins [--no-deps] PKG==VER...` makes benches/.venv if
# it is missing and installs the pins that are missing or at another version (the runners share
# this one environment).
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
[ -x "$here/.venv/bin/python" ] || python3 -m venv "$here/.venv"
ensure_pins() {
  local flags=()
  if [ "$1" = "--no-deps" ]; then flags=(--no-deps); shift; fi
  "$here/.venv/bin/python" - "$@" <<'PY' || "$here/.venv/bin/pip" install -q "${flags[@]}" "$@"
import sys
from importlib.metadata import version, PackageNotFoundError
for pin in sys.argv[1:]:
    name, want = pin.split("==")
    try:
        if version(name) != want:
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
PY
}
