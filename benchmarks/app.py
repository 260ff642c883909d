"""Dashboard start-up: seconds from `streamlit run` to the first page rendered in headless
Chromium, and to the example photo fully explained (the first start cold, then warm).

    python -m benchmarks.app [--runs 3]
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


def one_start(chromium: str) -> tuple[float, float]:
    """(seconds to the page title, seconds to the example's first CAM caption) from a fresh server."""
    from playwright.sync_api import sync_playwright

    port = free_port()
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(APP), "--server.headless", "true",
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
            page.get_by_text("evidence for older").first.wait_for(timeout=120_000)
            explained = time.perf_counter() - t
            b.close()
    finally:
        proc.terminate()
        proc.wait()
    return title, explained


def main(argv: list[str] | None = None) -> int:
    p = parser("app", __doc__, checkpoint=False, threads=False)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args(argv)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("benchmarks.app needs chromium on PATH (apt-get install chromium)")
    titles, times = zip(*(one_start(chromium) for _ in range(args.runs)), strict=True)
    warm = slice(1, None) if len(times) > 1 else slice(None)
    print(f"streamlit run -> first page in Chromium, {len(times)} starts (the first cold):")
    for label, ts in (("page rendered (title)", titles), ("example photo fully explained", times)):
        print(f"  {label:32s} first {ts[0]:.1f} s, warm median {statistics.median(ts[warm]):.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
