"""Build the documentation site, open it in headless Chromium, and check that its pages render.

    python docs/screenshot.py OUT_DIR

builds the site strictly into OUT_DIR/site, serves it on a local port, and for each page in
PAGES writes OUT_DIR/<name>.png (a screenshot) and checks it: the PNG is not blank (more than
MIN_COLOURS distinct colours; a page that failed to render is one colour, a page whose styles did
not load is a few) and the rendered DOM holds the page's expected text. Exit status 0 when every
page passes. tests/test_docs.py runs the same functions.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# page name -> (path under the site, text its rendered DOM must contain)
PAGES = {
    "home": ("", "finds defects in images"),
    "cli": ("reference/cli/", "adps train"),
    "api": ("reference/api/checkpoint/", "Checkpoint"),
}
MIN_COLOURS = 64
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--hide-scrollbars",
                  "--window-size=1280,1000")


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def build_site(site_dir: Path) -> subprocess.CompletedProcess:
    """``mkdocs build --strict`` into ``site_dir`` (warnings are errors)."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                           str(site_dir)], cwd=ROOT, capture_output=True, text=True, env=env,
                          check=False)


@contextmanager
def serve(site_dir: Path) -> Iterator[str]:
    """The built site over HTTP on a free local port (directory URLs need a server)."""
    handler = functools.partial(_QuietHandler, directory=str(site_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        pass


def _chromium(chromium: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=timeout, check=False)


def screenshot(chromium: str, url: str, png: Path) -> None:
    result = _chromium(chromium, "--virtual-time-budget=5000", f"--screenshot={png}", url)
    if not png.is_file():
        raise RuntimeError(f"chromium wrote no screenshot of {url}: {result.stderr[-2000:]}")


def dom(chromium: str, url: str) -> str:
    return _chromium(chromium, "--virtual-time-budget=5000", "--dump-dom", url).stdout


def distinct_colours(png: Path) -> int:
    from PIL import Image

    with Image.open(png) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1 << 24)
    return len(colours or ())


def check_pages(chromium: str, site_dir: Path, out_dir: Path) -> dict[str, str]:
    """Screenshot and check every page of PAGES; name -> problem ("" when the page passes)."""
    problems = {}
    with serve(site_dir) as base:
        for name, (path, text) in PAGES.items():
            png = out_dir / f"{name}.png"
            screenshot(chromium, base + path, png)
            colours = distinct_colours(png)
            problem = []
            if colours <= MIN_COLOURS:
                problem.append(f"{png} has {colours} distinct colours (blank or unstyled)")
            if text not in dom(chromium, base + path):
                problem.append(f"the rendered page {path or 'index'} lacks {text!r}")
            problems[name] = "; ".join(problem)
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    chromium = find_chromium()
    if chromium is None:
        print("chromium not found", file=sys.stderr)
        return 2
    built = build_site(out / "site")
    if built.returncode:
        print(built.stderr, file=sys.stderr)
        return 1
    problems = check_pages(chromium, out / "site", out)
    for name, problem in problems.items():
        print(f"{name}: {problem or 'ok'} ({out / (name + '.png')})")
    return 1 if any(problems.values()) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
