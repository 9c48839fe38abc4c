"""Autobahn|Testsuite's fuzzing client against the real WebSocket stack (tests only).

Starts `Server(config, echo_websockets=True)` on 127.0.0.1:0 with the default limits
(the same handshake, session writer and frame limit as chat; see `live/echo.py`),
registers a user, installs autobahntestsuite 0.8.2 for Python 2.7 into
`.venv/autobahn` (once; pyenv's 2.7.18), runs `wstest -m fuzzingclient` against it,
and reads the JSON report. Every case must be OK, NON-STRICT or INFORMATIONAL, and
where the server is the one to fail the connection, its close frame must carry the
expected code (stricter than Autobahn, which accepts a dropped TCP connection there,
where the peer sees only 1006); except the 9.x cases whose message is larger than
`limits.max_frame_bytes`: those must be refused with close code 1009. Exits 1 listing
the cases that are not; 2 when Python 2.7 is not to be had.

Run by `scripts/autobahn` and `tests/test_autobahn.py`:
    python -m tests.autobahn [--cases 'PATTERN' ...] [--report DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import trio

from messageai.config import Config
from messageai.server import Server
from tests.helpers import make_config

ROOT = Path(__file__).resolve().parent.parent
INSTALL_DIR = ROOT / ".venv" / "autobahn"
VERSION = "0.8.2"
PYTHON27 = "2.7.18"
# 12.x and 13.x test permessage-deflate, which the server does not negotiate.
EXCLUDED = {
    "12.*": "permessage-deflate is not offered",
    "13.*": "permessage-deflate is not offered",
}
PASSING = {"OK", "NON-STRICT", "INFORMATIONAL"}
CLOSE_PASSING = {"OK", "INFORMATIONAL"}

_K, _M = 1 << 10, 1 << 20
# The message size of each 9.x ("limits/performance") case, from the cases' sources.
_NINE_SIZES = {
    1: [64 * _K, 256 * _K, 1 * _M, 4 * _M, 8 * _M, 16 * _M],  # text
    2: [64 * _K, 256 * _K, 1 * _M, 4 * _M, 8 * _M, 16 * _M],  # binary
    3: [4 * _M] * 9,  # fragmented text
    4: [4 * _M] * 9,  # fragmented binary
    5: [1 * _M] * 6,  # text sent in chops
    6: [1 * _M] * 6,  # binary sent in chops
    7: [0, 16, 64, 256, 1 * _K, 4 * _K],  # 1,000 text messages each
    8: [0, 16, 64, 256, 1 * _K, 4 * _K],  # 1,000 binary messages each
}


def nine_size(case: str) -> int | None:
    """The message size of 9.x case `case` ("9.1.3"), None for other cases."""
    parts = case.split(".")
    if len(parts) != 3 or parts[0] != "9":
        return None
    return _NINE_SIZES[int(parts[1])][int(parts[2]) - 1]


def python27() -> tuple[list[str] | None, str]:
    """The command that runs pyenv's Python 2.7.18, or None and why it is not here."""
    pyenv = shutil.which("pyenv") or str(Path.home() / ".pyenv" / "bin" / "pyenv")
    if not os.access(pyenv, os.X_OK):
        return None, "pyenv is not installed (Autobahn|Testsuite runs on Python 2.7)"
    command = [pyenv, "exec", "python"]
    probe = subprocess.run(
        [*command, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
        env={**os.environ, "PYENV_VERSION": PYTHON27},
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0 or probe.stdout.strip() != PYTHON27:
        return None, f"pyenv has no Python {PYTHON27}: {probe.stderr.strip()[:200]}"
    return command, ""


def install(python: list[str]) -> None:
    """autobahntestsuite into INSTALL_DIR, unless a complete install is there already."""
    stamp = INSTALL_DIR / f".installed-{VERSION}"
    if stamp.exists():
        return
    print(f"installing autobahntestsuite {VERSION} into {INSTALL_DIR} ...", file=sys.stderr)
    shutil.rmtree(INSTALL_DIR, ignore_errors=True)
    # Run from elsewhere: in the repository, pip would see this project's egg-info.
    with tempfile.TemporaryDirectory() as cwd:
        subprocess.run(
            [
                *python,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--target",
                str(INSTALL_DIR),
                f"autobahntestsuite=={VERSION}",
            ],
            env={**os.environ, "PYENV_VERSION": PYTHON27},
            cwd=cwd,
            check=True,
        )
    stamp.touch()


def echo_config(data_dir: Path) -> Config:
    # The default limits (max_frame_bytes 65536): 9.1.1 and 9.2.1 (64 KiB) fit, the
    # larger 9.x messages do not.
    return make_config(data_dir)


async def run_fuzzer(
    python: list[str], workdir: Path, cases: list[str]
) -> tuple[dict[str, dict[str, Any]], int]:
    """Serve, run the fuzzing client, and return its index (case -> result) and the
    server's frame limit."""
    config = echo_config(workdir / "data")
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(Server(config, echo_websockets=True).run)
        async with httpx.AsyncClient(base_url=server.url) as http:
            r = await http.post(
                "/v1/auth/register", json={"username": "autobahn", "password": "password1"}
            )
            r.raise_for_status()
            token = r.json()["token"]
        spec = {
            "outdir": str(workdir / "reports"),
            "servers": [
                {
                    "agent": "messageai",
                    "url": f"ws://127.0.0.1:{server.port}/v1/ws?access_token={token}",
                }
            ],
            "cases": cases,
            "exclude-cases": sorted(EXCLUDED),
            "exclude-agent-cases": {},
        }
        (workdir / "fuzzingclient.json").write_text(json.dumps(spec, indent=2))
        program = (
            "import site, sys; site.addsitedir(sys.argv[1]); "
            "sys.argv = ['wstest', '-m', 'fuzzingclient', '-s', sys.argv[2]]; "
            "from autobahntestsuite import wstest; wstest.run()"
        )
        with (workdir / "wstest.log").open("wb") as log:
            await trio.run_process(
                [*python, "-c", program, str(INSTALL_DIR), str(workdir / "fuzzingclient.json")],
                env={**os.environ, "PYENV_VERSION": PYTHON27},
                cwd=workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        server.shutdown()
    reports = workdir / "reports"
    index = json.loads((reports / "index.json").read_text())
    results: dict[str, dict[str, Any]] = index["messageai"]
    for result in results.values():
        case_report = json.loads((reports / result["reportfile"]).read_text())
        result["expectedClose"] = case_report["expectedClose"]
    return results, config.limits.max_frame_bytes


def failures(results: dict[str, dict[str, Any]], max_frame_bytes: int) -> list[str]:
    """One line per case that is not as required."""
    out = []
    for case, result in sorted(results.items(), key=lambda kv: _case_key(kv[0])):
        size = nine_size(case)
        expected = result["expectedClose"]
        if size is not None and size > max_frame_bytes:
            if result.get("remoteCloseCode") != 1009:
                out.append(
                    f"{case}: a {size}-byte message must be refused with 1009, "
                    f"got close code {result.get('remoteCloseCode')}"
                )
        elif result["behavior"] not in PASSING or result["behaviorClose"] not in CLOSE_PASSING:
            out.append(
                f"{case}: {result['behavior']} (close: {result['behaviorClose']}, "
                f"code {result.get('remoteCloseCode')}) - see {result.get('reportfile')}"
            )
        elif not expected["closedByMe"] and result["remoteCloseCode"] not in expected["closeCode"]:
            # Autobahn lets a server that must fail the connection drop TCP without a
            # close frame ("requireClean": false); the peer then sees only 1006. Ours
            # must say why.
            out.append(
                f"{case}: the server must close with one of {expected['closeCode']}, "
                f"its close frame said {result['remoteCloseCode']} (None: no close frame)"
            )
    return out


def summary(results: dict[str, dict[str, Any]], max_frame_bytes: int) -> dict[str, int]:
    counts: dict[str, int] = {}
    for case, result in results.items():
        size = nine_size(case)
        if size is not None and size > max_frame_bytes:
            key = f"refused with {result.get('remoteCloseCode')} (over the limit)"
        else:
            key = result["behavior"]
        counts[key] = counts.get(key, 0) + 1
    return counts


def _case_key(case: str) -> tuple[int, ...]:
    return tuple(int(part) for part in case.split("."))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/autobahn", description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", default=["*"], help="case patterns (default: all)")
    parser.add_argument("--report", type=Path, help="keep the report in this folder")
    args = parser.parse_args(argv)
    python, why = python27()
    if python is None:
        print(f"autobahn: {why}", file=sys.stderr)
        return 2
    install(python)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="autobahn-") as tmp:
        workdir = args.report.resolve() if args.report else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        results, limit = trio.run(run_fuzzer, python, workdir, args.cases)
        failed = failures(results, limit)
        counts = summary(results, limit)
    print(f"autobahn: {len(results)} cases in {time.monotonic() - started:.0f} s")
    for key, count in sorted(counts.items()):
        print(f"  {key}: {count}")
    for pattern, why in EXCLUDED.items():
        print(f"  excluded {pattern}: {why}")
    if failed:
        print(f"autobahn: {len(failed)} cases failed:", file=sys.stderr)
        for line in failed:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
