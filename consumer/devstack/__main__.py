"""`python -m consumer.devstack run|preflight`: the local stack behind `make run`, and the check before tests."""

from __future__ import annotations

import argparse
import sys

from consumer.devstack.emulators import ToolMissing, require_tools


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m consumer.devstack")
    parser.add_argument("command", choices=["run", "preflight"])
    args = parser.parse_args(argv)
    try:
        require_tools()
    except ToolMissing as e:
        print(e, file=sys.stderr)
        return 3
    if args.command == "preflight":
        return 0
    from consumer.devstack.local import run

    return run()


if __name__ == "__main__":
    sys.exit(main())
