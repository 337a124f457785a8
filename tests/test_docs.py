"""Every code block of every docs/*.md file runs, so the documentation cannot rot.

    ```console        each line `$ COMMAND` runs in bash from the repository root, where
                      `symnet` means `python -m symnet` (a plain `symnet ARGS` runs
                      in-process, through symnet.cli.main); it must exit with status 0,
                      and print what the lines after it show, if any (see `same_output`:
                      times and speeds are masked, `...` stands for what is left out)
    ```console-error  the same, but each command must fail (a status other than 0)
    ```python         runs in a fresh interpreter from the repository root
    ```nn             must parse and check (compiler.parse)

Other blocks (```text, plain ```) are illustrations and are not run. The blocks of one
file run in order, as a reader would type them (a tutorial trains, then evaluates what
it saved), and the first failure stops that file's test with its file and line. New
files under docs/ are picked up as they appear. Outputs the docs write go to out/,
which git ignores.
"""
import difflib
import io
import os
import re
import shlex
import subprocess
import sys
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

from compiler.errors import SymnetError
from compiler.pipeline import parse
from symnet import cli

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
# Outputs shown for the Debian package's Fashion-MNIST are compared only where it is
# installed (elsewhere the commands train on the embedded subset: other numbers).
FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
RUNNABLE = ("console", "console-error", "python", "nn")
TIMEOUT = 300
# Shell functions, so `symnet` and `python` mean this interpreter anywhere in a line.
PRELUDE = ('set -o pipefail\nsymnet() { "$SYMNET_PYTHON" -m symnet "$@"; }\n'
           'python() { "$SYMNET_PYTHON" "$@"; }\n')
SHELL_SYNTAX = re.compile(r"[|&;<>()$`*?~]")


@dataclass
class Block:
    kind: str          # the fence's info string: console, python, nn, ...
    line: int          # 1-based line of the block's first content line
    text: str


def code_blocks(path):
    """The fenced blocks of a Markdown file, with their kinds and line numbers."""
    blocks, lines = [], path.read_text(encoding="utf-8").split("\n")
    k = 0
    while k < len(lines):
        fence = re.match(r"^(\s*)(```+|~~~+)\s*([\w-]*)", lines[k])
        if not fence:
            k += 1
            continue
        indent, marker, kind = fence.groups()
        end = k + 1
        while end < len(lines) and not lines[end].strip().startswith(marker):
            end += 1
        body = [line[len(indent):] if line.startswith(indent) else line
                for line in lines[k + 1:end]]
        blocks.append(Block(kind, k + 2, "\n".join(body)))
        k = end + 1
    return blocks


def commands(block):
    """(line, command) for each `$ ` line of a console block; a trailing backslash
    continues a command on the next line."""
    return [(line, command) for line, command, _ in commands_and_outputs(block)]


def commands_and_outputs(block):
    """(line, command, the output lines shown after it) for each `$ ` line."""
    found, pending = [], None
    for offset, line in enumerate(block.text.split("\n")):
        if pending is not None:
            pending = (pending[0], pending[1] + "\n" + line, [])
        elif line.startswith("$ "):
            pending = (block.line + offset, line[2:], [])
        elif found:
            found[-1][2].append(line)
        if pending is not None and not pending[1].endswith("\\"):
            found.append(pending)
            pending = None
    return found


# What differs from run to run: times, speeds, whether the machine code was cached,
# what the cache holds; and from machine to machine: gpucheck's float32 rounding errors
# (the vector width sets the order of a sum), which the line's verdict judges.
VOLATILE = [(re.compile(r"^\S+: [\d,]+ compiled model\(s\), [\d,]+ bytes$"),
             "CACHE: # compiled model(s), # bytes"),
            (re.compile(r"[\d,]+ samples/s"), "# samples/s"),
            (re.compile(r"\bin [\d.]+ s\b"), "in # s"),
            (re.compile(r"  [\d.]+ s$"), "  # s"),
            (re.compile(r" \(machine code from the cache\)"), ""),
            (re.compile(r"\d\.\de[-+]\d\d(?=.*  (ok|FAIL)$)"), "#.#e-##")]


def normalized(line):
    for pattern, replacement in VOLATILE:
        line = pattern.sub(replacement, line)
    return line.rstrip()


# The progress line a step prints every 10 s when output is not a terminal: on a busy
# machine an epoch the docs show in a few seconds can take that long.
PROGRESS = re.compile(r"^.* \[[#.]+\] +\d+% \d+/\d+ [\d,]+ steps/s  loss \S+$")


def same_output(shown, printed):
    """Whether the printed lines are the shown ones: a shown line `...` (indented or not)
    stands for any number of lines, and `...` inside a line for any text."""
    shown = [normalized(line) for line in shown]
    printed = [normalized(line) for line in printed if not PROGRESS.match(line)]
    while shown and not shown[-1]:
        shown.pop()
    while printed and not printed[-1]:
        printed.pop()
    pattern = "".join(r"(?:[^\n]*\n)*" if line.strip() == "..." else
                      r"[^\n]*".join(map(re.escape, line.split("..."))) + "\n" for line in shown)
    return re.fullmatch(pattern, "".join(line + "\n" for line in printed)) is not None


def environment():
    env = dict(os.environ, SYMNET_PYTHON=sys.executable, COLUMNS="100")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def run_console(block, where):
    """Run each command of a console block; returns a failure message or None."""
    for line, command, shown in commands_and_outputs(block):
        result = run_command(command)
        expect_failure = block.kind == "console-error"
        if (result.returncode != 0) != expect_failure:
            wanted = "a failure" if expect_failure else "status 0"
            return (f"{where(line)}: `{command}` exited with status {result.returncode} "
                    f"({wanted} expected)\n{tail(result)}")
        if "Traceback (most recent call last)" in result.stderr and "--traceback" not in command:
            return f"{where(line)}: `{command}` printed a Python traceback\n{tail(result)}"
        printed = (result.stdout + result.stderr).split("\n")
        comparable = any(shown) and (os.path.isdir(FASHION_MNIST) or
                                     not any(FASHION_MNIST in s for s in shown))
        if comparable and not same_output(shown, printed):
            return (f"{where(line)}: `{command}` printed other lines than the docs show:\n"
                    + "\n".join(difflib.unified_diff([normalized(s) for s in shown],
                                                     [normalized(p) for p in printed],
                                                     "shown", "printed", lineterm="")))
    return None


def run_command(command):
    """A plain `symnet ARGS` runs in this process (cli.main, from the repository root),
    which saves starting an interpreter per command; anything else runs in bash."""
    words = shlex.split(command)
    if words[:1] == ["symnet"] and not SHELL_SYNTAX.search(command):
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err), working_directory(ROOT):
            try:
                status = cli.main(words[1:])
            except SystemExit as exit:             # usage errors, --help, --version
                status = exit.code
        return subprocess.CompletedProcess(words, status, out.getvalue(), err.getvalue())
    return subprocess.run(["bash", "-c", PRELUDE + command], cwd=ROOT, env=environment(),
                          capture_output=True, text=True, timeout=TIMEOUT)


@contextmanager
def working_directory(path):
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def run_python(block, where):
    result = subprocess.run([sys.executable, "-c", block.text], cwd=ROOT, env=environment(),
                            capture_output=True, text=True, timeout=TIMEOUT)
    if result.returncode != 0:
        return f"{where(block.line)}: python block exited with status {result.returncode}\n" \
               f"{tail(result)}"
    return None


def check_nn(block, where):
    try:
        parse(block.text, filename=where(block.line))
    except SymnetError as error:
        return f"{where(block.line)}: nn block does not check:\n{error.format()}"
    return None


def tail(result, lines=15):
    text = (result.stdout + "\n" + result.stderr).strip().split("\n")
    return "\n".join(text[-lines:])


RUNNERS = {"console": run_console, "console-error": run_console, "python": run_python,
           "nn": check_nn}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_block_runs(doc):
    relative = doc.relative_to(ROOT)

    def where(line):
        return f"{relative}:{line}"

    for block in code_blocks(doc):
        if block.kind in RUNNERS:
            failure = RUNNERS[block.kind](block, where)
            if failure:
                pytest.fail(failure, pytrace=False)


# ---- the runner itself ----------------------------------------------------------------
def test_code_blocks_and_commands_are_found_with_their_lines(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("intro\n```console\n$ symnet check a.nn\noutput\n$ symnet grad \\\n"
                   "  b.nn\n```\n\n```python\nprint(1)\n```\n```text\n$ not run\n```\n")
    blocks = code_blocks(doc)
    assert [(b.kind, b.line) for b in blocks] == [("console", 3), ("python", 10), ("text", 13)]
    assert commands(blocks[0]) == [(3, "symnet check a.nn"), (5, "symnet grad \\\n  b.nn")]


def test_failing_blocks_are_reported_with_file_and_line(tmp_path):
    def where(line):
        return f"x.md:{line}"

    failing = Block("console", 7, "$ symnet check examples/linreg.nn\n$ symnet check nope.nn")
    message = run_console(failing, where)
    assert message.startswith("x.md:8: `symnet check nope.nn` exited with status 1")
    assert "error: no such file: nope.nn" in message
    assert run_console(Block("console-error", 3, "$ symnet check nope.nn"), where) is None
    assert run_python(Block("python", 4, "raise SystemExit(3)"), where).startswith(
        "x.md:4: python block exited with status 3")
    assert "unknown function" in check_nn(Block("nn", 5, "input x[N]\ny = rleu(x)"), where)


def test_shown_output_must_match_but_for_times_and_left_out_lines():
    printed = ["compiled mlp for cpu (f32) in 0.31 s", "epoch 1/1  loss 0.5  123,456 samples/s  1.4 s",
               "row 1", "row 2", "row 3", "saved out/x.ckpt", ""]
    shown = ["compiled mlp for cpu (f32) in 2.00 s (machine code from the cache)",
             "epoch 1/1  loss 0.5  9 samples/s  0.1 s", "row 1", "  ...", "saved ...ckpt"]
    assert same_output(shown, printed)
    assert not same_output(["compiled mlp for cpu (f32) in 2.00 s", "epoch 1/1  loss 0.6"], printed[:2])
    assert not same_output(shown[:3], printed)             # no `...`: every line is shown
    failing = Block("console", 2, "$ symnet check examples/linreg.nn\nmodel linreg (elsewhere.nn)")
    message = run_console(failing, lambda line: f"x.md:{line}")
    assert message.startswith("x.md:2: `symnet check examples/linreg.nn` printed other lines")
    assert "-model linreg (elsewhere.nn)\n+model linreg (examples/linreg.nn)" in message
