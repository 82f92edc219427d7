"""`python -m devstack run|stop|preflight`: the local stack behind `make run` / `make stop`, and the check
before tests. A failure is one line (what is wrong, what to do); --debug or LOG_LEVEL=DEBUG adds the traceback."""

from __future__ import annotations

import argparse
import os
import sys

from devstack.emulators import ToolMissing, require_tools


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack")
    parser.add_argument("command", choices=["run", "stop", "preflight"])
    parser.add_argument("--debug", action="store_true", help="print the traceback of a failure")
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get("LOG_LEVEL", "").upper() == "DEBUG"
    from devstack.local import StackError, run, stop_stack

    try:
        if args.command == "stop":
            print(stop_stack(os.environ))
            return 0
        require_tools()
        if args.command == "preflight":
            return 0
        return run()
    except ToolMissing as e:
        _fail(str(e), debug)
        return 3
    except StackError as e:
        _fail(f"make {args.command}: {e}", debug)
        return 3
    except Exception as e:
        from consumer.cli import explain

        _fail(f"make {args.command}: {explain(e)}", debug)
        return 1


def _fail(line: str, debug: bool) -> None:
    if debug:
        import traceback

        traceback.print_exc()
    print(line, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
