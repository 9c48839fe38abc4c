"""The browser tests' harness: the real server as `scripts/serve` runs it, and Debian's
Chromium driven by Playwright (Python, sync API), never a browser Playwright downloads.

`Served` is `./scripts/serve --port P --data-dir D` as a child process (stopped and started
again on the same port for the restart scenario); its output goes to a log file, never a
pipe that could fill. `Watch` records what a page logs: console errors, uncaught
exceptions and Content-Security-Policy violations (from the page's own
`securitypolicyviolation` events too), so each test can say none happened but those it
expects. Used by tests/browser/conftest.py.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import attrs
from playwright.sync_api import BrowserContext, ConsoleMessage, Error, Page

ROOT = Path(__file__).resolve().parent.parent.parent
CHROMIUM = Path(os.environ.get("MESSAGEAI_CHROMIUM", "/usr/bin/chromium"))
# The flags that work on this project's machines (no GPU, no sandbox as root, and no
# background connections to Google's hosts, which the closed network refuses).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# The first start on a fresh clone also installs .venv (scripts/serve does, once).
START_TIMEOUT_SECONDS = 240.0
URL_LINE = re.compile(r"MessageAI serving (http://127\.0\.0\.1:(\d+))")


def config_with(changes: dict[str, dict[str, str]]) -> str:
    """The shipped messageai.toml with `changes` (section -> key -> a TOML value, as
    text) made in place: every key is in the shipped file, so each one is replaced."""
    text = (ROOT / "messageai.toml").read_text()
    for section, values in changes.items():
        head = re.search(rf"^\[{re.escape(section)}\]$", text, re.M)
        assert head is not None, f"no [{section}] in messageai.toml"
        end = re.compile(r"^\[", re.M).search(text, head.end())
        stop = end.start() if end else len(text)
        body = text[head.end() : stop]
        for key, value in values.items():
            body, count = re.subn(
                rf"^{re.escape(key)} = .*$", f"{key} = {value}", body, count=1, flags=re.M
            )
            assert count == 1, f"no {section}.{key} in messageai.toml"
        text = text[: head.end()] + body + text[stop:]
    return text


class Served:
    """The server started by `scripts/serve` (the shipped messageai.toml, or `config`) on
    `port` (0: a free one, then the same one again after `stop`), with its data in
    `data_dir`; `env` sets config keys the way an operator can
    (`MESSAGEAI_AUTH__MODE=clerk`)."""

    def __init__(
        self,
        data_dir: Path,
        log_path: Path,
        config: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.config = config
        self.env = env or {}
        self.port = 0
        self.url = ""
        self._process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def start(self) -> str:
        assert self._process is None, "already running"
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [
                    str(ROOT / "scripts" / "serve"),
                    "--port",
                    str(self.port),
                    "--data-dir",
                    str(self.data_dir),
                    *(["--config", str(self.config)] if self.config else []),
                ],
                cwd=ROOT,
                env={**os.environ, **self.env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            with self.log_path.open("rb") as log:
                log.seek(self._log_offset)
                found = URL_LINE.search(log.read().decode(errors="replace"))
            if found:
                self.url, self.port = found.group(1), int(found.group(2))
                return self.url
            if self._process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"scripts/serve did not start; its output:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM (the server closes WebSockets with 1001 and exits), then wait."""
        process, self._process = self._process, None
        if process is None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise AssertionError("the server did not stop on SIGTERM") from None

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """The server stopped (SIGSTOP) for the block, then continued: a slow server, for
        what a client shows while it waits (its sockets stay open; the kernel buffers)."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self._process.send_signal(signal.SIGCONT)

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


# Installed with Playwright's init script (the page's CSP does not govern it). Every text
# each status line showed, by its testID: `status-<client_id>` while the message is in the
# outbox, `status-<seq>` once acknowledged (the row may be re-mounted then), over reloads.
STATUS_RECORDER = """
(() => {
  // Kept in sessionStorage too, so a reload of the tab does not forget what it saw.
  const saved = sessionStorage.getItem('__statuses');
  window.__statuses = saved ? JSON.parse(saved) : {};
  const scan = () => {
    let changed = false;
    for (const el of document.querySelectorAll('[data-testid^="status-"]')) {
      const id = el.getAttribute('data-testid');
      const texts = window.__statuses[id] || (window.__statuses[id] = []);
      if (texts[texts.length - 1] !== el.textContent) {
        texts.push(el.textContent);
        changed = true;
      }
    }
    if (changed) sessionStorage.setItem('__statuses', JSON.stringify(window.__statuses));
  };
  new MutationObserver(scan).observe(document, {
    subtree: true, childList: true, characterData: true, attributes: true,
  });
})();
"""


# Reports CSP violations into the page's own list, read back by `Watch.check`. Added with
# Playwright's init script, which the page's CSP does not govern.
VIOLATION_LISTENER = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation', (e) => {
  window.__cspViolations.push(e.violatedDirective + ' ' + e.blockedURI);
});
"""


@attrs.define
class Watch:
    """What one page reported; `expect` adds patterns of errors a scenario causes on
    purpose (the network going away, say)."""

    page: Page
    errors: list[str] = attrs.Factory(list)
    expected: list[re.Pattern[str]] = attrs.Factory(list)

    @classmethod
    def on(cls, page: Page) -> Watch:
        watch = cls(page)
        page.add_init_script(VIOLATION_LISTENER)
        page.add_init_script(STATUS_RECORDER)
        page.on("console", lambda message: watch.console(message))
        page.on("pageerror", lambda exc: watch.errors.append(f"uncaught: {exc}"))
        return watch

    def console(self, message: ConsoleMessage) -> None:
        text = message.text
        if message.type == "error" or "Content Security Policy" in text:
            where = message.location.get("url", "")
            self.errors.append(f"console.{message.type}: {text}" + (f" ({where})" if where else ""))

    def expect(self, pattern: str) -> None:
        self.expected.append(re.compile(pattern))

    def unexpected(self) -> list[str]:
        found = list(self.errors)
        # A closed page has no list to read: its console messages are all there is.
        with contextlib.suppress(Error):
            found += [f"CSP violation: {v}" for v in self.page.evaluate("window.__cspViolations")]
        return [e for e in found if not any(p.search(e) for p in self.expected)]


@attrs.define
class Person:
    """One person: a browser context of their own (own storage, own offline switch)."""

    name: str
    context: BrowserContext
    page: Page
    watch: Watch


class People(Protocol):
    """The `people` fixture: opens the app for one more person."""

    def __call__(self, name: str, *, phone: bool = False, at: Served | None = None) -> Person: ...


@attrs.define
class Shots:
    """Saves screenshots of a page in light and dark, named by test and screen."""

    folder: Path
    test: str
    taken: list[Path]

    def take(self, page: Page, screen: str) -> None:
        for scheme in ("light", "dark"):
            page.emulate_media(color_scheme=scheme)
            # The app follows the system scheme: give it a frame to restyle.
            page.wait_for_timeout(150)
            path = self.folder / f"{self.test}--{screen}--{scheme}.png"
            page.screenshot(path=str(path))
            self.taken.append(path)
        page.emulate_media(color_scheme="light")
