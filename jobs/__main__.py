"""``python -m jobs --list``: the jobs of this package (see :mod:`jobs.registry`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from jobs.registry import listing


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jobs", description="the jobs of this repository: python -m jobs.NAME")
    parser.add_argument("--list", action="store_true", help="one line per job: name, config class, Ray Train, what it does")
    args = parser.parse_args(argv)
    if not args.list:
        parser.print_help(sys.stderr)
        return 2
    print(listing())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
