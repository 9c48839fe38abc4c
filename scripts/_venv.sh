# Sourced by scripts/serve and scripts/test. `ensure_venv [EXTRAS]` makes .venv and
# installs the project into it, again only when pyproject.toml changed since.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

ensure_venv() {
    local extras="${1:-}"
    local python="${PYTHON:-python3}"
    if [ ! -x .venv/bin/python ]; then
        "$python" -m venv .venv
    fi
    local stamp=".venv/.installed${extras:+-$extras}"
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        echo "installing MessageAI into .venv ..." >&2
        .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${extras:+[$extras]}" >&2
        touch "$stamp"
    fi
}

# `ensure_chromium`: Debian's Chromium for the browser tests (tests/browser drive it with
# Playwright; Playwright never downloads a browser here). Installed with apt-get when
# missing and this is root; otherwise the tests say how to get it.
ensure_chromium() {
    local browser="${MESSAGEAI_CHROMIUM:-/usr/bin/chromium}"
    if [ -x "$browser" ]; then
        return
    fi
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing Debian's chromium for the browser tests ..." >&2
        if apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >&2; then
            return
        fi
    fi
    echo "no $browser: the browser tests cannot run (apt-get install chromium)" >&2
}
