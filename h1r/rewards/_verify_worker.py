"""Worker process for `h1r.rewards.parallel`: answers math-verify questions, one JSON line each.

Protocol on stdin/stdout: after importing math-verify it prints `{"ready": true}`; then for each
request line `{"pred": str, "gold": str, "timeout": float}` it prints `{"ok": bool}`. It exits on
EOF, i.e. when the parent goes away. The parent kills it if an answer takes too long.
"""

from __future__ import annotations

import json
import logging
import sys


def main() -> None:
    logging.disable(logging.WARNING)  # math-verify logs every timeout; the parent only needs the verdict
    import math_verify  # noqa: F401  (pay the import before saying ready)

    from h1r.rewards.math import math_verify_equal

    out = sys.stdout
    out.write('{"ready": true}\n')
    out.flush()
    for line in sys.stdin:
        try:
            req = json.loads(line)
            ok = math_verify_equal(str(req["pred"]), str(req["gold"]), float(req.get("timeout", 5)))
        except Exception:
            ok = False
        out.write('{"ok": true}\n' if ok else '{"ok": false}\n')
        out.flush()


if __name__ == "__main__":
    main()
