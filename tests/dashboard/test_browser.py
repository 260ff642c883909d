"""End to end in a real browser: streamlit run, upload grace_hopper.jpg, read the result."""

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import matplotlib.cbook
import pytest

from ..conftest import ROOT, skip_unless_ci

HOPPER = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(autouse=True)
def _needs_chromium():
    if CHROMIUM is None:
        skip_unless_ci("no chromium on PATH (.ci/run installs it: apt-get install chromium)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(tmp_path, fairface: str):
    """The dashboard on the shipped checkpoints, served by streamlit run, with its results cache, crop cache
    and evaluation sets in tmp_path and the FairFace sample looked for at ``fairface``. Yields its URL."""
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "AGEGENDER_RESULTS": str(tmp_path / "results"),
           "AGEGENDER_CACHE": str(tmp_path / "cache"), "AGEGENDER_FAIRFACE": fairface}
    log = open(tmp_path / "streamlit.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "dashboard" / "app.py"),
         "--server.headless", "true", "--server.address", "127.0.0.1", "--server.port", str(port),
         "--browser.gatherUsageStats", "false"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + "/_stcore/health", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail(f"streamlit did not start: {(tmp_path / 'streamlit.log').read_text()[-2000:]}")
    yield url
    proc.terminate()
    proc.wait(timeout=20)
    log.close()


@pytest.fixture
def server(tmp_path):
    """No FairFace sample seeded."""
    yield from serve(tmp_path, str(tmp_path / "no-sample"))


def launch(p):
    return p.chromium.launch(executable_path=CHROMIUM, args=[
        "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"])


def test_upload_predict_and_explain_in_chromium(server, tmp_path):
    import playwright.sync_api as playwright  # in requirements-dev.txt: missing is an error, not a skip

    with playwright.sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1400, "height": 2200})
        page.goto(server, wait_until="domcontentloaded")
        page.get_by_text("Upload", exact=True).click()
        page.locator("input[type=file]").first.set_input_files(HOPPER)
        result = page.get_by_text(re.compile(r"P\(female\) [0-9.]+ → (Male|Female|Uncertain)")).first
        result.wait_for(timeout=120_000)
        text = result.inner_text()
        assert re.search(r"age [0-9.]+ y", text), text
        captions = page.get_by_text("evidence for older")
        captions.first.wait_for(timeout=60_000)
        # the boxed photo, the model input and three heat maps, all decoded by the browser
        page.wait_for_function(
            "() => { const im = [...document.querySelectorAll('[data-testid=stImage] img')];"
            " return im.length >= 5 && im.every(i => i.complete && i.naturalWidth > 0); }", timeout=60_000)
        page.screenshot(path=str(tmp_path / "predict.png"), full_page=True)
        browser.close()
    assert (tmp_path / "predict.png").stat().st_size > 10_000


def test_register_evaluate_and_review_a_dataset_in_chromium(server, tmp_path):
    """A reviewer's first minutes with their own data: register a small FairFace-format folder on the
    Evaluation sets page, evaluate the shipped baseline on it, then open its bias report."""
    import playwright.sync_api as playwright

    from ..evaluation.test_evalset import fairface_like

    fairface_like(tmp_path / "ff")
    with playwright.sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1400, "height": 2200})
        page.goto(server, wait_until="domcontentloaded")
        page.get_by_role("link", name="Evaluation sets").click()
        page.get_by_label("Name", exact=True).fill("ff")
        page.get_by_label("Images", exact=True).fill(str(tmp_path / "ff"))
        page.get_by_label("Images", exact=True).press("Enter")
        page.get_by_role("button", name="Register").click()
        page.get_by_text("Registered ff: 9 images (fairface, photos).").wait_for(timeout=60_000)
        page.get_by_role("button", name="Evaluate").click()
        done = page.get_by_text(re.compile(r"dlib-resnet29-\w+ on ff: a face found in 6 of 8 images")).first
        done.wait_for(timeout=180_000)
        page.get_by_role("link", name="Bias report").click()
        # the page first renders the checkpoint's own val split; a pick made while that run is going
        # would be lost to it, so wait for its report before picking the set
        page.get_by_text("Disparity", exact=True).wait_for(timeout=120_000)
        page.get_by_role("combobox", name=re.compile("Evaluation set")).click()
        page.get_by_role("option", name="ff").click()
        page.get_by_text("A face was found in 6 of 8 images").wait_for(timeout=120_000)
        page.screenshot(path=str(tmp_path / "bias.png"), full_page=True)
        browser.close()
    assert (tmp_path / "bias.png").stat().st_size > 10_000
