"""`specdistill`'s entry point: parse, run the command, print a user's mistake as one line (exit 2)."""

from __future__ import annotations

import os
import sys
import traceback

from ..errors import DEBUG_ENV, UserError, one_line
from .bench import cmd_bench
from .commands import cmd_convert, cmd_data, cmd_demo, cmd_eval, cmd_export, cmd_generate, cmd_init_draft, cmd_train
from .parser import build_parser

COMMANDS = {"sft": cmd_train, "distill": cmd_train, "eval": cmd_eval, "generate": cmd_generate, "bench": cmd_bench,
            "data": cmd_data, "demo": cmd_demo, "init-draft": cmd_init_draft, "convert": cmd_convert,
            "export": cmd_export}


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code: 0, 2 for a user's mistake (one line on stderr: the command, then
    the message), 3 for a diverged training run. Any other exception is a bug and propagates with its traceback
    (exit 1). --debug or SPECDISTILL_DEBUG=1 prints the traceback of a user's mistake too."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug, prog = os.environ.get(DEBUG_ENV, "") not in ("", "0") or "--debug" in argv, "specdistill"
    try:
        args = build_parser().parse_args(argv)
        debug, prog = debug or args.debug, f"specdistill {args.command}"
        with _reporting(args.command):
            return COMMANDS[args.command](args) or 0
    except (UserError, FileNotFoundError) as exc:
        if debug:
            traceback.print_exc()
        print(f"{getattr(exc, 'prog', None) or prog}: error: {one_line(str(exc))}", file=sys.stderr)
        return 2


def _reporting(command: str):
    """Phase lines and progress bars on stderr for the commands that run over many prompts (progress.py)."""
    import contextlib

    from ..progress import reporting

    return reporting(command) if command in ("bench", "eval", "generate") else contextlib.nullcontext()


if __name__ == "__main__":
    sys.exit(main())
