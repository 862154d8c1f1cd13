"""The examples of docs/*.md run as tests, so a page that drifts from the code fails.

One test per page. In a fresh temporary directory (the current directory while the
page runs) each fenced block runs in order: ```` ```python ```` blocks with ``exec``
in one namespace per page, ```` ```console ```` blocks line by line (``$ ledger ...``
through the real command line in this process, any other ``$ ...`` line in bash),
their output compared with the block's text after normalising what changes from run
to run. The conventions (markers, normalisation) are documented in docs/index.md,
"Examples are tests". A page marked ``example-servers`` runs against the local test
servers of tests/servers/ (a fake Hub, moto's S3 with a bucket ``bucket``): the Hub and
AWS client settings point there while it runs, so its ``hf://`` and ``s3://`` URLs are
real remotes.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import os
import re
import runpy
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from servers.hub import serve_hub
from servers.s3 import AWS_KEY_ID, AWS_SECRET, s3_endpoint

from ledger.cli import cli

__all__ = ["s3_endpoint"]  # the session's S3 server, for the pages that use it

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
PAGE_DIR = "/tmp/demo"  # how a page writes the temporary directory it runs in

_FENCE = re.compile(r"^```(\S*)\s*$")
_MARKER = re.compile(r"^<!--\s*([a-z-]+)(?::\s*(.*?))?\s*-->\s*$")
_SHELL_ONLY = re.compile(r"[|&;<>()`$*?]|^\w+=")
_EXIT = re.compile(r"^\[exit status (\d+)\]$")


@dataclass
class Block:
    """One fenced block of a page: its language, text, first line and markers."""

    lang: str
    text: str
    line: int
    markers: dict[str, str] = field(default_factory=dict)


def parse(text: str) -> tuple[list[Block], dict[str, str]]:
    """The fenced blocks of a page (top-level fences only) and its page-wide markers."""
    blocks: list[Block] = []
    page: dict[str, str] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            mk = _MARKER.match(lines[i])
            if mk and mk.group(1) in ("skip-page-examples", "example-servers"):
                page[mk.group(1)] = mk.group(2) or ""
            i += 1
            continue
        markers: dict[str, str] = {}
        j = i - 1
        while j >= 0 and (mk := _MARKER.match(lines[j])):
            markers[mk.group(1)] = mk.group(2) or ""
            j -= 1
        end = i + 1
        while end < len(lines) and lines[end].rstrip() != "```":
            end += 1
        blocks.append(Block(m.group(1), "\n".join(lines[i + 1 : end]), i + 1, markers))
        i = end + 1
    return blocks, page


def normalise(text: str, sizes: bool) -> list[str]:
    """``text`` with ids, times, ages, durations (and sizes) replaced, spaces collapsed."""
    text = re.sub(r"\b\d+(\.\d+)?\s?[smhdw] ago\b", "<age>", text)
    text = re.sub(
        r"\b\d{4}-\d\d-\d\d[ T]\d\d:\d\d(:\d\d(\.\d+)?)?(Z| UTC|[+-]\d\d:?\d\d)?", "<time>", text
    )
    text = re.sub(r"\b[0-9a-f]{7,64}\b", "<id>", text)
    text = re.sub(r"\b\d+(\.\d+)?m?s\b", "<duration>", text)
    if sizes:
        text = re.sub(r"\b\d+(\.\d+)? (B|KiB|MiB|GiB|TiB)\b", "<size>", text)
        text = re.sub(r"\b\d+(\.\d+)?x\b", "<ratio>", text)
        text = re.sub(r"\(\d+%\)", "(<percent>)", text)
    text = re.sub("─+", "─", text)
    out = [re.sub(r"\s+", " ", line).strip() for line in text.splitlines()]
    while out and not out[-1]:
        out.pop()
    while out and not out[0]:
        out.pop(0)
    return out


def matches(expected: list[str], actual: list[str]) -> bool:
    """Whether ``actual`` is ``expected``, a line ``...`` (and a remark) standing for any lines."""

    def gap(line: str) -> bool:
        return line == "..." or line.startswith("... ")

    if not any(gap(line) for line in expected):
        return expected == actual
    pieces: list[list[str]] = [[]]
    for line in expected:
        if gap(line):
            pieces.append([])
        else:
            pieces[-1].append(line)
    first, *middle, last = pieces
    if actual[: len(first)] != first or (last and actual[-len(last) :] != last):
        return False
    pos, stop = len(first), len(actual) - len(last)
    for piece in middle:
        while pos + len(piece) <= stop and actual[pos : pos + len(piece)] != piece:
            pos += 1
        if pos + len(piece) > stop:
            return False
        pos += len(piece)
    return pos <= stop


def commands(block: Block) -> list[tuple[str, list[str], int]]:
    """A console block as (command, expected output lines, expected exit status)."""
    out: list[tuple[str, list[str], int]] = []
    for line in block.text.splitlines():
        if line.startswith("$ "):
            out.append((line[2:], [], 0))
        elif out:
            m = _EXIT.match(line.strip())
            if m:
                cmd, lines, _ = out[-1]
                out[-1] = (cmd, lines, int(m.group(1)))
            else:
                out[-1][1].append(line)
    return out


def run_command(command: str, tmp: Path) -> tuple[str, int]:
    """Run one ``$`` line in ``tmp``: output (stdout and stderr together), exit status."""
    command = command.replace(PAGE_DIR, str(tmp))
    # python and plain ledger commands run in this process: torch is imported once per
    # test run, not once per command (a subprocess costs seconds on a busy machine)
    script = re.fullmatch(r"python ([\w.-]+\.py)", command)
    if script:
        return _in_process(lambda: runpy.run_path(str(tmp / script.group(1)), run_name="__main__"))
    head, _, tail = command.partition(" | ")
    code = re.fullmatch(r"python -c ('[^']*')", tail or head)
    if code and (not tail or _plain_ledger(head)):
        stdin, status = run_command(head, tmp) if tail else ("", 0)
        if status:
            return stdin, status
        source = shlex.split(code.group(1))[0]
        return _in_process(lambda: exec(compile(source, "<-c>", "exec"), {}), stdin)
    if _plain_ledger(command):
        args = shlex.split(command)[1:]
        result = CliRunner(env={"LEDGER_DIR": None, "COLUMNS": None}).invoke(cli, args)
        return result.output, result.exit_code
    env = {k: v for k, v in os.environ.items() if k != "LEDGER_DIR"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run(
        ["bash", "-c", command],
        cwd=tmp,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=120,
        check=False,
    )
    return proc.stdout, proc.returncode


def _plain_ledger(command: str) -> bool:
    """Whether ``command`` is ``ledger ARGS`` with nothing for a shell to do."""
    return command.startswith("ledger ") and not _SHELL_ONLY.search(command)


def _in_process(run: Callable[[], object], stdin: str = "") -> tuple[str, int]:
    """Run ``run()`` with stdin, stdout and stderr redirected; output and exit status."""
    out = io.StringIO()
    saved = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            run()
    except SystemExit as e:
        return out.getvalue(), e.code if isinstance(e.code, int) else 1
    finally:
        sys.stdin = saved
    return out.getvalue(), 0


def run_console(page: str, block: Block, tmp: Path) -> None:
    """Every command of a console block, each output compared with the block's text."""
    sizes = "example-sizes" in block.markers
    compare = block.markers.get("example-output") != "ignore"
    for command, expected, status in commands(block):
        output, code = run_command(command, tmp)
        output = output.replace(str(tmp.resolve()), PAGE_DIR).replace(str(tmp), PAGE_DIR)
        where = f"docs/{page}:{block.line}: $ {command}"
        assert code == status, f"{where}\nexit status {code}, the page says {status}\n{output}"
        if not compare:
            continue
        want, got = normalise("\n".join(expected), sizes), normalise(output, sizes)
        if not matches(want, got):
            diff = "\n".join(difflib.unified_diff(want, got, "page", "actual", lineterm=""))
            pytest.fail(f"{where}\noutput differs (normalised):\n{diff}\n\nactual:\n{output}")


def run_page(page: str, tmp: Path) -> int:
    """Run every runnable block of ``page`` in ``tmp``; how many ran."""
    blocks, markers = parse((DOCS / page).read_text())
    if "skip-page-examples" in markers:
        pytest.skip(f"docs/{page}: {markers['skip-page-examples']}")
    namespace: dict[str, object] = {"__name__": "__docs__"}
    ran = 0
    for block in blocks:
        if block.lang not in ("python", "console") or "skip-example" in block.markers:
            continue
        if "example-file" in block.markers:
            (tmp / block.markers["example-file"]).write_text(block.text + "\n")
        elif block.lang == "python":
            code = compile("\n" * block.line + block.text, f"docs/{page}", "exec")  # page lines
            exec(code, namespace)
        else:
            run_console(page, block, tmp)
        ran += 1
    return ran


def serve_locally(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp: Path
) -> None:
    """Point the Hub and AWS clients at the test servers (a fresh fake Hub, the S3 server
    with a bucket named ``bucket``) until the test ends."""
    import boto3

    hub = serve_hub(monkeypatch, tmp / ".hub")
    request.addfinalizer(hub.stop)
    endpoint = request.getfixturevalue("s3_endpoint")
    for name, value in (
        ("AWS_ENDPOINT_URL", endpoint),
        ("AWS_ACCESS_KEY_ID", AWS_KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", AWS_SECRET),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        monkeypatch.setenv(name, value)
    s3 = boto3.client("s3", endpoint_url=endpoint)
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket="bucket")


@pytest.mark.parametrize("page", PAGES)
def test_page_examples(
    page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """Every python and console block of the page runs and prints what the page shows."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LEDGER_DIR", raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the demos' tiny models: threads only contend on 2 cores
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    if "example-servers" in parse((DOCS / page).read_text())[1]:
        serve_locally(request, monkeypatch, tmp_path)
    if run_page(page, tmp_path) == 0:
        pytest.skip(f"docs/{page} has no example to run")


def test_every_page_is_in_the_site_nav() -> None:
    """A page added to docs/ without a place in mkdocs.yml's nav would be unreachable."""
    nav = (DOCS.parent / "mkdocs.yml").read_text()
    assert [p for p in PAGES if f" {p}\n" not in nav] == []


def test_normalise_and_match() -> None:
    """The comparison ignores ids, ages and widths but not a changed word or number."""
    a = normalise("79a4d76ddd92  main  step 400  loss=0.07  1m ago\n─────", sizes=False)
    b = normalise("0123456789ab main step 400 loss=0.07 12s ago\n──", sizes=False)
    assert a == b
    assert normalise("step 401 loss=0.07", sizes=False) != normalise("step 400 loss=0.07", False)
    assert matches(["a", "...", "c"], ["a", "b", "b", "c"])
    assert matches(["a", "... (why)", "c"], ["a", "c"])
    assert not matches(["a", "...", "c"], ["a", "b"])
    assert not matches(["a", "b"], ["a", "b", "c"])
    assert normalise("10.0 KiB", sizes=True) == normalise("2 B", sizes=True)
    assert normalise("10.0 KiB", sizes=False) != normalise("2 B", sizes=False)
