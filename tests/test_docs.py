"""Every code block of every docs/*.md file runs, so the documentation cannot rot.

    ```console        each line `$ COMMAND` runs in bash from the repository root, where
                      `symnet` means `python -m symnet` (a plain `symnet ARGS` runs
                      in-process, through symnet.cli.main); it must exit with status 0
    ```console-error  the same, but each command must fail (a status other than 0)
    ```python         runs in a fresh interpreter from the repository root
    ```nn             must parse and check (compiler.parse)

Other blocks (```text, plain ```) are illustrations and are not run. The blocks of one
file run in order, as a reader would type them (a tutorial trains, then evaluates what
it saved), and the first failure stops that file's test with its file and line. New
files under docs/ are picked up as they appear. Outputs the docs write go to out/,
which git ignores.
"""
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
DOCS = sorted((ROOT / "docs").glob("*.md"))
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
    found, pending = [], None
    for offset, line in enumerate(block.text.split("\n")):
        if pending is not None:
            pending = (pending[0], pending[1] + "\n" + line)
        elif line.startswith("$ "):
            pending = (block.line + offset, line[2:])
        if pending is not None and not pending[1].endswith("\\"):
            found.append(pending)
            pending = None
    return found


def environment():
    env = dict(os.environ, SYMNET_PYTHON=sys.executable, COLUMNS="100")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def run_console(block, where):
    """Run each command of a console block; returns a failure message or None."""
    for line, command in commands(block):
        result = run_command(command)
        expect_failure = block.kind == "console-error"
        if (result.returncode != 0) != expect_failure:
            wanted = "a failure" if expect_failure else "status 0"
            return (f"{where(line)}: `{command}` exited with status {result.returncode} "
                    f"({wanted} expected)\n{tail(result)}")
        if "Traceback (most recent call last)" in result.stderr and "--traceback" not in command:
            return f"{where(line)}: `{command}` printed a Python traceback\n{tail(result)}"
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
