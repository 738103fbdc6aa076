"""Long commands say what they are doing: bench, eval and generate print their phases on stderr, in order, with
progress bars only on a terminal (or when SPECDISTILL_PROGRESS=1 forces them), and stdout keeps exactly the JSON
it printed before."""

from __future__ import annotations

import json
import re

import pytest

from specdistill.cli import main
from specdistill.progress import PROGRESS_ENV, bar, phase, reporting

PHASE = re.compile(r"^specdistill (\w+) \[\d+:\d\d:\d\d\] (.*)$")


def phases(err: str, command: str) -> list[str]:
    found = [PHASE.match(line) for line in err.splitlines()]
    return [m.group(2) for m in found if m and m.group(1) == command]


def in_order(lines: list[str], expected: list[str]) -> bool:
    """Each expected text starts some line, each after the previous one's line."""
    at = 0
    for text in expected:
        at = next((i for i in range(at, len(lines)) if lines[i].startswith(text)), None)
        if at is None:
            return False
        at += 1
    return True


BENCH = ["bench", "--target", "tiny-teacher", "--draft", "tiny-student", "--task", "arith", "--limit", "2",
         "--gamma", "2", "--max-new-tokens", "4", "--repeats", "2"]


def test_bench_prints_its_phases_in_order_and_stdout_stays_json(capsys, monkeypatch):
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    assert main(BENCH) == 0
    out, err = capsys.readouterr()
    lines = phases(err, "bench")
    assert in_order(lines, [
        "loading the target tiny-teacher", "draft 1/1: loading tiny-student",
        "draft 1/1 tiny-student, batch size 1, gamma 2: 2 prompt(s)",
        "warm-up on 2 prompt(s): speculative (engine), reference (target alone)",
        "timed run 1/2: speculative (engine)", "timed run 1/2: reference (target alone)",
        "timed run 1/2: forward costs", "timed run 2/2: speculative (engine)",
        "timed run 2/2: reference (target alone)", "timed run 2/2: forward costs",
        "expected acceptance"]), lines
    [row] = [json.loads(line) for line in out.splitlines()]  # stdout: the result line only, as before
    assert row["gamma"] == 2 and row["draft"] == "tiny-student"
    assert "\r" not in err and "it/s" not in err  # stderr is not a terminal: no bars


def test_a_wrong_order_fails_the_order_check():
    assert not in_order(["timed run 1/2: a", "warm-up"], ["warm-up", "timed run 1/2"])
    assert in_order(["warm-up", "x", "timed run 1/2: a"], ["warm-up", "timed run 1/2"])


def test_bars_are_forced_on_by_the_environment_and_go_to_stderr(capsys, monkeypatch):
    monkeypatch.setenv(PROGRESS_ENV, "1")
    assert main(["generate", "--model", "tiny-teacher", "--draft", "tiny-student", "--prompt", "1+2=",
                 "--max-new-tokens", "4"]) == 0
    out, err = capsys.readouterr()
    assert "speculative:" in err and "/1 [" in err and "it/s" in err  # tqdm's bar: its description and count
    assert in_order(phases(err, "generate"), ["loading tiny-teacher and the draft tiny-student",
                                              "generating 1 prompt(s), speculative at gamma 4"])
    assert "speculative" not in out and len(out.splitlines()) == 1  # the generated text only


def test_eval_phases(capsys, monkeypatch):
    monkeypatch.setenv(PROGRESS_ENV, "0")
    assert main(["eval", "--model", "tiny-student", "--task", "arith", "--limit", "2", "--max-new-tokens", "4",
                 "--teacher", "tiny-teacher"]) == 0
    out, err = capsys.readouterr()
    assert in_order(phases(err, "eval"), ["loading tiny-student and the teacher tiny-teacher",
                                          "scoring 2 record(s)", "top-1 agreement"])
    assert json.loads(out)["n"] == 2 and "it/s" not in err


@pytest.mark.parametrize("setting, tty, expected", [("1", False, True), ("0", True, False), ("", True, True),
                                                     ("", False, False)])
def test_bars_follow_the_terminal_unless_forced(setting, tty, expected, monkeypatch, capsys):
    monkeypatch.setenv(PROGRESS_ENV, setting)
    monkeypatch.setattr("sys.stderr.isatty", lambda: tty)
    with reporting("bench"):
        with bar(3, "counting") as progress:
            shown = not progress.disable  # (tqdm sets disable when it closes)
            progress.update(3)
        assert shown is expected
    with bar(3, "outside") as progress:  # outside a command: always silent
        assert progress.disable
    phase("not printed")
    assert "not printed" not in capsys.readouterr().err
