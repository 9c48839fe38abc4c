"""The committed web export is the one `scripts/build-app` makes from `app/` as it is now.

`messageai/webapp/SOURCE-HASH` records the hash of `app/`'s sources and of the exported
files (messageai/webapp_hash.py, the one definition both use); this test recomputes both.
When it fails: run `scripts/build-app` and commit `messageai/webapp/`.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from messageai import webapp_hash


def test_committed_export_is_built_from_the_current_app_sources() -> None:
    if not (webapp_hash.APP_DIR / "package.json").is_file():
        pytest.skip("this checkout has no app/ (the Expo project) to build the export from")
    reasons = webapp_hash.stale_reasons()
    assert not reasons, "; ".join(reasons) + ": run scripts/build-app and commit messageai/webapp/"


def make_app(app: Path) -> None:
    (app / "app").mkdir(parents=True)
    (app / "src" / "engine").mkdir(parents=True)
    (app / "package.json").write_text('{"name": "app"}')
    (app / "package-lock.json").write_text('{"lockfileVersion": 3}')
    (app / "app" / "index.tsx").write_text("export default function Index() {}\n")
    (app / "src" / "engine" / "outbox.ts").write_text("export const outbox = 1;\n")


def test_source_hash_follows_sources_and_the_lockfile(tmp_path: Path) -> None:
    app = tmp_path / "app"
    make_app(app)
    first = webapp_hash.source_hash(app)
    (app / "src" / "engine" / "outbox.ts").write_text("export const outbox = 2;\n")
    second = webapp_hash.source_hash(app)
    assert second != first
    (app / "package-lock.json").write_text('{"lockfileVersion": 3, "packages": {}}')
    third = webapp_hash.source_hash(app)
    assert third != second
    # A rename with the same bytes is another app.
    (app / "src" / "engine" / "outbox.ts").rename(app / "src" / "engine" / "queue.ts")
    assert webapp_hash.source_hash(app) != third


def test_source_hash_ignores_installed_generated_and_test_files(tmp_path: Path) -> None:
    app = tmp_path / "app"
    make_app(app)
    before = webapp_hash.source_hash(app)
    for rel in (
        "node_modules/react/index.js",
        ".expo/types/router.d.ts",
        "dist/index.html",
        "ios/Podfile",
        "android/build.gradle",
        "expo-env.d.ts",
        "src/engine/__tests__/outbox.ts",
        "src/engine/outbox.test.ts",
        "src/ui/Button.spec.tsx",
        "jest.config.js",
        "jest.setup.ts",
        "tsconfig.tsbuildinfo",
    ):
        path = app / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("generated")
    assert webapp_hash.source_hash(app) == before
    # A source folder of the same name as a top-level build folder still counts.
    (app / "src" / "dist").mkdir()
    (app / "src" / "dist" / "x.ts").write_text("export {};\n")
    assert webapp_hash.source_hash(app) != before


def test_stale_reasons_name_a_changed_app_and_a_hand_edited_export(tmp_path: Path) -> None:
    app, web = tmp_path / "app", tmp_path / "webapp"
    make_app(app)
    assert webapp_hash.stale_reasons(app, web) == [
        f"{web / 'SOURCE-HASH'} is missing: the web app was never built"
    ]
    (web / "_expo").mkdir(parents=True)
    (web / "index.html").write_text("<html></html>")
    (web / "_expo" / "entry.js").write_text("1")
    args = ["--app", str(app), "--webapp", str(web)]
    assert webapp_hash.main(["write", *args]) == 0
    assert webapp_hash.main(["check", *args]) == 0
    assert webapp_hash.stale_reasons(app, web) == []

    (web / "_expo" / "entry.js").write_text("2")
    assert webapp_hash.stale_reasons(app, web) == [
        f"the files in {web} are not the ones scripts/build-app wrote"
    ]
    (web / "_expo" / "entry.js").write_text("1")
    (app / "app" / "index.tsx").write_text("export default function Index() { return 1 }\n")
    assert webapp_hash.stale_reasons(app, web) == [f"{app} changed since the export was built"]
    assert webapp_hash.main(["check", *args]) == 1


def test_a_malformed_hash_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "SOURCE-HASH").write_text("source abc\n")
    with pytest.raises(ValueError, match="unexpected line"):
        webapp_hash.read(tmp_path)
    (tmp_path / "SOURCE-HASH").write_text("source " + "a" * 64 + "\n")
    with pytest.raises(ValueError, match="both source and export"):
        webapp_hash.read(tmp_path)


def test_in_a_git_work_tree_what_git_ignores_is_not_hashed(tmp_path: Path) -> None:
    app = tmp_path / "app"
    make_app(app)
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (app / ".gitignore").write_text("generated/\n*.cache\n")
    before = webapp_hash.source_hash(app)
    (app / "generated").mkdir()
    (app / "generated" / "routes.d.ts").write_text("made by a tool")
    (app / "src" / "x.cache").write_text("cache")
    assert webapp_hash.source_hash(app) == before
    # Not yet added to git, and not ignored: a new source counts.
    (app / "src" / "new.ts").write_text("export {};\n")
    assert webapp_hash.source_hash(app) != before
