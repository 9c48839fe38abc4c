"""The README, followed literally: every `sh` block runs, in order, against a fresh server.

The blocks run in one `bash` (`set -euo pipefail`, so an unset `$TOKEN` or a failing
command stops it), in a temporary directory laid out like a fresh clone: the shipped
`messageai.toml` as a link to `messageai/default.toml` (a copy of the real one) and
`.venv` pointing at the interpreter running the tests (so `source .venv/bin/activate`
works, and `messageai` is not on `PATH` until a block puts it there). `HOME` is a
temporary directory too, so the client's stores (`~/...`, the per-user data directory)
are fresh. Before the blocks run, the test starts the server the quick start's
`./scripts/serve` would (`messageai serve --config messageai.toml`, data in `./data`),
but on a free port; `127.0.0.1:8080` and `localhost:8080` in the blocks are rewritten to
that port. `curl` runs with `--fail-with-body`, so an HTTP error fails its block.

A block that cannot run here (one that serves in the foreground, an interactive
`messageai chat`, the test suite, the bench or chaos, an example of flags) is preceded
in the README by `<!-- not run: REASON -->`; the reason is required.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import attrs
import pytest
import trio

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SHELL_LANGUAGES = ("sh", "bash", "shell")
NOT_RUN = re.compile(r"^<!--\s*not run(?::\s*(?P<reason>.*?))?\s*-->$")
# The address the README's examples use, and the server's default.
README_ADDRESSES = ("127.0.0.1:8080", "localhost:8080")
# A deadline for the whole README on a loaded 2-core machine (each `messageai` command
# starts a Python process), not a speed target.
TIMEOUT_SECONDS = 180
# What `./scripts/serve` runs, on a free port.
SERVE = [sys.executable, "-m", "messageai", "serve", "--config", "messageai.toml", "--port", "0"]


@attrs.frozen
class Block:
    line: int  # of the opening fence, 1-based
    code: str
    not_run: str | None  # the reason, when the README marks the block


def shell_blocks(text: str) -> list[Block]:
    """The README's fenced `sh`/`bash`/`shell` blocks, each with its `not run` reason."""
    lines = text.splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        fence = lines[index].strip()
        if not fence.startswith("```"):
            index += 1
            continue
        language = fence[3:].strip()
        end = index + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        if language in SHELL_LANGUAGES:
            before = next((line.strip() for line in reversed(lines[:index]) if line.strip()), "")
            marker = NOT_RUN.match(before)
            reason = None if marker is None else (marker.group("reason") or "")
            blocks.append(Block(index + 1, "\n".join(lines[index + 1 : end]), reason))
        index = end + 1
    return blocks


def script(blocks: list[Block], port: int) -> str:
    """One bash script of the blocks to run, each announced by its README line."""
    parts = [
        "set -euo pipefail",
        'curl() { command curl --fail-with-body "$@"; }',
    ]
    for block in blocks:
        if block.not_run is not None:
            continue
        code = block.code
        for address in README_ADDRESSES:
            code = code.replace(address, f"127.0.0.1:{port}")
        parts.append(f"printf '\\n>>> README.md line {block.line}\\n'")
        parts.append(code)
    parts.append("printf '\\n>>> README done\\n'")
    return "\n".join(parts) + "\n"


def fresh_clone(tmp_path: Path) -> Path:
    clone = tmp_path / "clone"
    (clone / "messageai").mkdir(parents=True)
    shutil.copyfile(ROOT / "messageai" / "default.toml", clone / "messageai" / "default.toml")
    # As in the repository: the config the README names is a link to the shipped default.
    (clone / "messageai.toml").symlink_to(Path("messageai") / "default.toml")
    (clone / ".venv").symlink_to(sys.prefix)
    return clone


def clean_environment(home: Path) -> dict[str, str]:
    venv_bin = str(Path(sys.prefix) / "bin")
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("MESSAGEAI_", "XDG_")) and name != "VIRTUAL_ENV"
    }
    env["PATH"] = os.pathsep.join(
        part for part in env.get("PATH", "").split(os.pathsep) if part != venv_bin
    )
    env["HOME"] = str(home)
    return env


async def start_server(nursery: trio.Nursery, clone: Path, env: dict[str, str]) -> trio.Process:
    """SERVE as a child process in `clone` (read its port with `read_port`)."""
    process: trio.Process = await nursery.start(
        functools.partial(
            trio.run_process,
            SERVE,
            cwd=clone,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            check=False,
        )
    )
    return process


async def read_port(process: trio.Process) -> int:
    assert process.stdout is not None
    line = b""
    with trio.fail_after(20):
        while b"\n" not in line:
            chunk = await process.stdout.receive_some(4096)
            assert chunk, "the server exited before printing its URL"
            line += chunk
    match = re.search(rb"http://127\.0\.0\.1:(\d+)", line)
    assert match, line
    return int(match.group(1))


def test_shell_blocks_are_found_and_skipped_ones_say_why() -> None:
    blocks = shell_blocks(README.read_text("utf-8"))
    assert any(block.not_run is None for block in blocks)
    for block in blocks:
        if block.not_run is not None:
            assert len(block.not_run) >= 10, f"README.md line {block.line}: say why it is not run"


@pytest.mark.slow
async def test_readme_shell_blocks_run_in_order_against_a_fresh_server(tmp_path: Path) -> None:
    if sys.prefix == sys.base_prefix:
        pytest.skip("needs to run in a virtual environment (the README's .venv)")
    if shutil.which("curl") is None:
        pytest.skip("the README's REST examples need curl, which is not installed")
    clone = fresh_clone(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    env = clean_environment(home)
    blocks = shell_blocks(README.read_text("utf-8"))
    with trio.fail_after(TIMEOUT_SECONDS):
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery, clone, env)
            try:
                port = await read_port(server)
                (tmp_path / "readme.sh").write_text(script(blocks, port))
                result = await trio.run_process(
                    ["bash", str(tmp_path / "readme.sh")],
                    cwd=clone,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    capture_stdout=True,
                    stderr=subprocess.STDOUT,
                    check=False,
                )
            finally:
                server.terminate()
    output = result.stdout.decode("utf-8", "replace")
    started = re.findall(r">>> README.md line (\d+)", output)
    where = f"README.md line {started[-1]}" if started else "before the first block"
    assert result.returncode == 0, f"the README's blocks failed at {where}:\n{output[-4000:]}"
    assert ">>> README done" in output
    assert "Traceback" not in output, output
    # Following the README never edits the shipped default through the link.
    shipped = (ROOT / "messageai" / "default.toml").read_bytes()
    assert (clone / "messageai" / "default.toml").read_bytes() == shipped
