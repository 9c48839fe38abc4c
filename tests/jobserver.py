"""`python -m tests.jobserver --config FILE --data-dir DIR`: `messageai serve` with the
test job kinds of `tests/jobkinds.py` registered, as a real child process for the
kill -9 tests (`ServerProcess(..., module="tests.jobserver")`). Everything else is the
server's own start-up: the same config loading, logging and signal handling."""

from __future__ import annotations

import functools
import sys

import trio

from messageai import cli
from messageai.server import Server
from messageai.sqlite import apply_best_practice
from tests.jobkinds import kinds_for


def main(argv: list[str]) -> int:
    args = cli.build_parser().parse_args(["serve", *argv])
    apply_best_practice()
    config = cli._load(args)
    cli.configure_logging(config)
    factory = functools.partial(Server, job_kinds=kinds_for(config.data_dir))
    return trio.run(cli._serve, config, factory)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
