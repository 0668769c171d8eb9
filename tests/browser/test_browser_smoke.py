"""The browser infrastructure on its own, without the dashboard: Chromium loads a page from a loopback server, runs
its script on a click, and a screenshot is written."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.browser.conftest import SCREENSHOTS, loopback_site, screenshot

PAGE = b"""<!doctype html>
<title>Smoke</title>
<p id="out">before</p>
<button id="go">Change</button>
<script>document.getElementById("go").onclick = () => { document.getElementById("out").textContent = "after"; };</script>
"""


@pytest.fixture
def site() -> Iterator[str]:
    with loopback_site(lambda path: PAGE) as url:
        yield url + "/"


def test_click_runs_the_page_script(page, site) -> None:
    page.goto(site)
    assert page.locator("#out").text_content() == "before"
    page.get_by_role("button", name="Change").click()
    page.wait_for_function("document.getElementById('out').textContent === 'after'")
    assert page.locator("#out").text_content() == "after"
    screenshot(page, "smoke")
    assert (SCREENSHOTS / "smoke.png").stat().st_size > 0
