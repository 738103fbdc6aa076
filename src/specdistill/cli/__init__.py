"""The `specdistill` command (DESIGN section 4). Each subcommand is a thin layer over the library.

args.py: the parser class, argument types and shared flags; parser.py: one function per command's flags;
checks.py: what the inference commands check and how they load models; commands.py and bench.py: the handlers;
main.py: the entry point and the command table."""

from .main import COMMANDS, main
from .parser import build_parser

__all__ = ["COMMANDS", "build_parser", "main"]
