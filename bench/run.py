"""Run every benchmark in bench/ (`make bench`), one after another, each in its own process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    failed = 0
    for script in sorted(HERE.glob("*.py")):
        if script.name in ("run.py", "soak.py") or script.name.startswith("_"):  # soak: correctness, run alone
            continue
        print(f"\n===== {script.name} =====", flush=True)
        failed |= subprocess.call([sys.executable, str(script)], cwd=HERE.parent) != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
