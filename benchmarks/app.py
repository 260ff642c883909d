"""Dashboard start-up: seconds from starting the server to the first page rendered in headless Chromium, and
to the example photo fully explained: its prediction shown and every Grad-CAM image drawn and decoded by the
browser. Two ways to start, taken in turn: `python -m dashboard` (what `make dashboard` runs: the first
page's caches warmed while the server starts) and plain `streamlit run dashboard/app.py`. The first start of
each is cold (files not yet in the page cache); medians are over the starts after it. Target: the example
explained within 8 s on 2 cores.

    python -m benchmarks.app [--runs 5]
"""

from __future__ import annotations

import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

from .common import APP, parser


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LAUNCHERS = {"python -m dashboard": ["-m", "dashboard"], "streamlit run": ["-m", "streamlit", "run", str(APP)]}


def one_start(chromium: str, launcher: list[str]) -> tuple[float, float]:
    """(seconds to the page title, seconds to the example fully explained) from a fresh server."""
    from playwright.sync_api import sync_playwright

    port = free_port()
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *launcher, "--server.headless", "true",
                             "--server.port", str(port), "--server.address", "127.0.0.1"],
                            cwd=APP.parents[1], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1)
                break
            except OSError:
                if proc.poll() is not None:
                    raise SystemExit(f"streamlit exited with {proc.returncode} before serving") from None
                time.sleep(0.1)
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu",
                                  "--disable-background-networking", "--no-first-run"])
            page = b.new_page()
            page.goto(f"http://127.0.0.1:{port}")
            page.get_by_role("heading", name="Predict & explain").wait_for(timeout=120_000)
            title = time.perf_counter() - t
            # the model input and the three maps of the one face, each decoded: the heatmaps are on screen
            page.wait_for_function(
                "() => { const im = [...document.querySelectorAll('[data-testid=stImage] img')];"
                " const maps = [...document.querySelectorAll('[data-testid=stImageCaption]')]"
                ".filter(c => c.innerText.startsWith('gender: evidence for'));"
                " return maps.length >= 1 && im.length >= 5 && im.every(i => i.complete && i.naturalWidth > 0); }",
                timeout=120_000, polling=50)
            explained = time.perf_counter() - t
            b.close()
    finally:
        proc.terminate()
        proc.wait()
    return title, explained


def main(argv: list[str] | None = None) -> int:
    p = parser("app", __doc__, checkpoint=False, threads=False)
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args(argv)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("benchmarks.app needs chromium on PATH (apt-get install chromium)")
    runs = {name: [] for name in LAUNCHERS}
    for _ in range(args.runs):
        for name, launcher in LAUNCHERS.items():
            runs[name].append(one_start(chromium, launcher))
    print(f"server start -> first page in Chromium, {args.runs} starts each, taken in turn (the first cold):")
    for name, starts in runs.items():
        titles, times = zip(*starts, strict=True)
        warm = slice(1, None) if len(times) > 1 else slice(None)
        for label, ts in (("page rendered (title)", titles), ("example fully explained", times)):
            print(f"  {name:20s} {label:26s} first {ts[0]:.1f} s, warm median {statistics.median(ts[warm]):.1f} s "
                  f"({', '.join(f'{x:.1f}' for x in ts)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
