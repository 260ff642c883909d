"""One box selection on the Embedding map in a real browser: streamlit run on a copy of the shipped checkpoint
whose val predictions are made up for 60 generated chips; a drag over the left part of the plot selects the
faces plotly marks selected, and the page's table holds a row per selected face, listing those files."""

import re

import pytest

from .test_browser import _needs_chromium as _needs_chromium  # noqa: F401 - the same skip, as a fixture here
from .test_browser import launch, serve
from .test_embedding_page import N, small_source

# the files plotly marks selected, from the figure in the page (each trace's selectedpoints index its text)
SELECTED_JS = """() => { const gd = document.querySelector('.js-plotly-plot');
  return gd.data.flatMap(t => (t.selectedpoints || []).map(i => t.text[i])); }"""
# the selected faces' table (the page's last): the text of its cells, a line each, of the rows the grid has drawn
# (those in view), and how many rows it holds
LISTED_JS = """() => { const d = [...document.querySelectorAll('[data-testid=stDataFrame]')].pop();
  const t = d && d.querySelector('table[role=grid]');
  if (!t) return ['', 0];
  const cells = [...t.querySelectorAll('td')].map(c => c.textContent).join('\\n');
  return [cells, Number(t.getAttribute('aria-rowcount'))]; }"""


@pytest.fixture
def server(tmp_path, monkeypatch):
    root, data = tmp_path / "ckpts", tmp_path / "utk" / "UTKFace"
    root.mkdir()
    names = small_source(root, data)
    monkeypatch.setenv("AGEGENDER_CHECKPOINTS", str(root))
    monkeypatch.setenv("AGEGENDER_UTKFACE", str(data))
    for url in serve(tmp_path, str(tmp_path / "no-sample")):
        yield url, names


def test_a_box_selection_on_the_map_fills_the_table(server, tmp_path):
    import playwright.sync_api as playwright

    url, names = server
    with playwright.sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1400, "height": 2000})
        page.goto(url, wait_until="domcontentloaded")
        page.get_by_role("link", name="Embedding map").click()
        page.get_by_text(re.compile(rf"{N} faces of UTKFace val")).wait_for(timeout=180_000)
        drag = page.locator(".js-plotly-plot .nsewdrag").first
        drag.wait_for(timeout=60_000)
        box = drag.bounding_box()
        page.mouse.move(box["x"] + 2, box["y"] + 2)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] / 2, steps=5)
        page.mouse.move(box["x"] + box["width"] * 0.55, box["y"] + box["height"] - 2, steps=5)
        page.mouse.up()
        caption = page.get_by_text(re.compile(rf"\d+ faces selected of {N}"))
        caption.wait_for(timeout=120_000)
        selected = sorted(page.evaluate(SELECTED_JS))
        assert 0 < len(selected) < N and set(selected) <= set(names)
        assert caption.inner_text().startswith(f"{len(selected)} faces selected")
        expected = [n for n in names if n in set(selected)]  # the table lists them in the map's (the source's) order
        page.wait_for_function(f"() => ({LISTED_JS})()[0].includes({expected[0]!r})", timeout=60_000)
        listed, rows = page.evaluate(LISTED_JS)
        page.screenshot(path=str(tmp_path / "embedding.png"), full_page=True)
        browser.close()
    shown = list(dict.fromkeys(re.findall(r"^\d+_\d_\d_\d+\.jpg\.chip\.jpg$", listed, re.M)))
    assert rows == len(selected) + 1  # a header and a row per selected face
    assert len(shown) >= min(len(selected), 8) and shown == expected[:len(shown)], (shown, expected)
