"""`python -m tachyon.router --replica URL ...`: `tachyon router` without the rest of the command line."""

from __future__ import annotations

import argparse
import logging
import sys

from tachyon.router.cli import add_router_parser


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tachyon")
    add_router_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["router", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
