"""The ``image3-dask`` command: run, strun, submit, status, cancel, serve, certs, simulate, asn,
config, demo.

The parser is in :mod:`image3_dask.cli.parser`, the options shared by the subcommands (checked
before a cluster starts) in :mod:`image3_dask.cli.options`, and the subcommands in
:mod:`image3_dask.cli.run` (run, strun, demo), :mod:`image3_dask.cli.tools` (simulate, asn,
config) and :mod:`image3_dask.cli.service` (submit, status, cancel, serve, certs).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from image3_dask.cli.interrupt import InterruptGuard
from image3_dask.cli.options import setup_logging
from image3_dask.cli.parser import build_parser, dashed, split_step_overrides
from image3_dask.cli.run import cmd_demo, cmd_run, cmd_strun
from image3_dask.cli.service import cmd_cancel, cmd_certs, cmd_serve, cmd_status, cmd_submit
from image3_dask.cli.tools import cmd_asn, cmd_config, cmd_simulate
from image3_dask.errors import ConfigError, Image3Error

__all__ = ["COMMANDS", "STEP_OVERRIDE_COMMANDS", "main"]

# The names the tests and older callers import.
_build_parser = build_parser
_split_step_overrides = split_step_overrides


#: Subcommand -> handler; a handler takes the parsed arguments and returns the exit code.
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run,
    "strun": cmd_strun,
    "simulate": cmd_simulate,
    "asn": cmd_asn,
    "config": cmd_config,
    "demo": cmd_demo,
    "submit": cmd_submit,
    "status": cmd_status,
    "cancel": cmd_cancel,
    "serve": cmd_serve,
    "certs": cmd_certs,
}


#: Subcommands that take ``--steps.<step>.<name>=<value>`` options (``args.step_overrides``).
STEP_OVERRIDE_COMMANDS = frozenset({"run", "strun", "submit", "config"})


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``image3-dask`` command; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # Worker tracebacks are reported once, as one message, by the step that failed.
    verbose = any(a in ("-v", "-vv", "--verbose") for a in argv)
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error" if verbose else "critical")
    parser = build_parser()
    try:
        argv, overrides = split_step_overrides(dashed(argv))
    except ConfigError as exc:
        parser.error(str(exc))
    args = parser.parse_args(argv)
    if overrides and args.command not in STEP_OVERRIDE_COMMANDS:
        parser.error(
            "--steps.<step>.<name>=<value> options only go with "
            + ", ".join(f"`{c}`" for c in sorted(STEP_OVERRIDE_COMMANDS))
        )
    args.step_overrides = overrides
    try:
        if args.command == "strun":
            setup_logging(
                2 if args.strun_verbose else args.verbose,
                args.quiet,
                args.log_level,
                args.log_file,
                args.log_stream,
            )
        else:
            setup_logging(args.verbose, args.quiet)
    except ConfigError as exc:
        parser.error(str(exc))
    try:
        with InterruptGuard():  # a Ctrl-C landing in a gc callback is not lost
            return COMMANDS[args.command](args)
    except Image3Error as exc:
        print(f"image3-dask: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # unwritable output folder, full disk...: one line, no traceback
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"image3-dask: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("image3-dask: interrupted", file=sys.stderr)
        return 130
