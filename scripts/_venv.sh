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
    # An install with extras (scripts/test's) holds the plain one scripts/serve needs:
    # the browser tests' first serve must not install it again.
    if [ -z "$extras" ]; then
        local other
        for other in .venv/.installed-*; do
            if [ -f "$other" ] && [ ! pyproject.toml -nt "$other" ]; then
                return
            fi
        done
    fi
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        echo "installing MessageAI into .venv ..." >&2
        .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${extras:+[$extras]}" >&2
        touch "$stamp"
    fi
}

# `ensure_debian BINARY PACKAGE WHAT`: Debian's PACKAGE, which provides BINARY (a name
# on PATH or a path), installed with apt-get when missing and this is root; otherwise
# the tests of WHAT skip and say how to get it.
ensure_debian() {
    local binary="$1" package="$2" what="$3"
    if command -v "$binary" >/dev/null; then
        return
    fi
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing Debian's $package for $what ..." >&2
        if apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package" >&2; then
            return
        fi
    fi
    echo "no $binary: $what cannot run (apt-get install $package)" >&2
}

# Debian's Chromium for the browser tests (tests/browser drive it with Playwright;
# Playwright never downloads a browser here).
ensure_chromium() {
    ensure_debian "${MESSAGEAI_CHROMIUM:-/usr/bin/chromium}" chromium "the browser tests"
}

# Debian's redis-server for the cluster tests (tests/test_cluster_*.py start their own,
# on a free port of 127.0.0.1 or on a network namespace of their own).
ensure_redis() {
    ensure_debian redis-server redis-server "the cluster tests"
}

# Debian's PostgreSQL for the directory tests (tests/postgres_server.py runs initdb into
# a temporary directory and its own postgres on a free port of 127.0.0.1). Debian keeps
# initdb off PATH, under /usr/lib/postgresql/VERSION/bin.
ensure_postgres() {
    local initdb
    for initdb in /usr/lib/postgresql/*/bin/initdb; do
        if [ -x "$initdb" ]; then
            return
        fi
    done
    ensure_debian /usr/lib/postgresql/15/bin/initdb postgresql "the PostgreSQL directory tests"
}
