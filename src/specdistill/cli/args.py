"""The command line's parser class, usage error, argument types (ranges checked where values enter) and the
flags several commands share."""

from __future__ import annotations

import argparse
import math

from ..errors import DEBUG_ENV, UserError


class UsageError(UserError):
    """A command-line argument is wrong (argparse's own checks, or the ranges below); `prog` is the command."""

    def __init__(self, message: str, prog: str | None = None):
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose usage errors are UsageErrors: main prints them on one line and returns 2."""

    def error(self, message: str):
        raise UsageError(f"{message} (see `{self.prog} --help`)", self.prog)


# ---------------------------------------------------------------- argument types: ranges checked where values enter
def int_at_least(low: int):
    """argparse type: an integer >= low."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value

    return parse


def finite_float(low: float | None = None, high: float | None = None, low_open: bool = False):
    """argparse type: a finite number in [low, high] (or (low, high] with low_open)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        bad = (not math.isfinite(value) or (low is not None and (value <= low if low_open else value < low))
               or (high is not None and value > high))
        if bad:
            left = "(" if low_open else "["
            span = f"{left}{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
            raise argparse.ArgumentTypeError(f"must be a finite number in {span}, got {text!r}")
        return value

    return parse


def int_list(low: int):
    """argparse type: a comma-separated list of integers >= low ("1,2,4"); the text is kept as given."""

    def parse(text: str) -> str:
        items = [t.strip() for t in str(text).split(",")]
        for item in items:
            try:
                value = int(item)
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected integers >= {low}, comma-separated (e.g. 1,2,4); "
                                                 f"{item!r} in {text!r} is not one") from None
            if value < low:
                raise argparse.ArgumentTypeError(f"every value must be >= {low}; got {value} in {text!r}")
        return text

    return parse


POSITIVE, NON_NEGATIVE = int_at_least(1), int_at_least(0)
TEMPERATURE, TOP_P = finite_float(0.0), finite_float(0.0, 1.0, low_open=True)
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")  # models.DTYPE_CHOICES; [1:]: the written ones
GAMMA_SCHEDULES = ("constant", "lupi", "heuristic")


# ---------------------------------------------------------------- flags shared by several commands
def add_config_args(p: argparse.ArgumentParser) -> None:
    """sft and distill: the YAML config and its --set overrides."""
    p.add_argument("config", help="YAML config file")
    add_debug(p)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set train.max_steps=10 (repeatable)")


def add_debug(p: argparse.ArgumentParser, default=argparse.SUPPRESS) -> None:
    p.add_argument("--debug", action="store_true", default=default,
                   help=f"show the traceback of an input error too (or set {DEBUG_ENV}=1)")


def add_dtype(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                   help="the models' dtype; auto (default): each checkpoint's own (its config's dtype, float32 "
                   "where it names none; the presets are float32)")


def add_inference_flags(p: argparse.ArgumentParser, json_help: str, draft: bool) -> None:
    """eval, generate and bench: --max-new-tokens, --seed, --device, --dtype, --draft-device and --json.
    draft: the command runs a draft beside its model (--seed for its sampling, --draft-device to place it)."""
    p.add_argument("--max-new-tokens", type=POSITIVE, default=64)
    if draft:
        p.add_argument("--seed", type=NON_NEGATIVE, default=0)
    p.add_argument("--device", default="auto")
    add_dtype(p)
    if draft:
        p.add_argument("--draft-device", help="the draft's device (default: --device), e.g. cpu beside a cuda target")
    p.add_argument("--json", dest="json_out", help=json_help)


def add_prompt_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="a YAML config, or a run's config.yaml: its data.views settings (system prompts, "
                   "template_options such as enable_thinking, the knowledge template, few_shot, the limits, "
                   "use_chat_template) and its datasets' field mapping make the prompts as training made them "
                   "(default: the default views, with no limits but the models' positions)")
