"""Every numerics benchmark in one command: `.venv/bin/python bench/numerics.py` (`make bench`).

Each table comes from an in-memory federated simulation on the `federated` package alone (no
broker, no Redis). The scripts also run on their own, with options (`--seeds`, ...). This is a
benchmark, not a test: on a shared machine, compare rows within one run and quote medians.
"""

from __future__ import annotations

import argparse
import runpy
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# In the order the issue lists the tables.
SCRIPTS = ("compression", "strategies", "byzantine", "privacy", "secagg")


def main() -> None:
    """Run the chosen benchmark scripts one after another."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("only", nargs="*", help=f"run only these, of: {', '.join(SCRIPTS)}")
    args = parser.parse_args()
    if unknown := set(args.only) - set(SCRIPTS):
        parser.error(f"no such benchmark: {', '.join(sorted(unknown))}")
    for name in args.only or SCRIPTS:
        print(f"\n=== bench/{name}.py ===", flush=True)
        started = time.monotonic()
        sys.argv = [str(HERE / f"{name}.py")]
        runpy.run_path(str(HERE / f"{name}.py"), run_name="__main__")
        print(f"=== bench/{name}.py took {time.monotonic() - started:.0f} s ===", flush=True)


if __name__ == "__main__":
    main()
