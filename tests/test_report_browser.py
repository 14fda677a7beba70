"""The HTML automation report in a real headless Chromium: offline, plots and figures present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_report import make_report

from cimcoder.eval.report import write_report

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium not installed at /usr/bin/chromium")
def test_report_opens_offline_with_plots_and_headline(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    report, *_ = make_report(n_fit=1500, n_eval=400)
    _, html_path = write_report(report, tmp_path)
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("request", lambda r: requests.append(r.url))
            page.goto(html_path.as_uri(), wait_until="load")
            h = report.headline
            assert h.automation_rate is not None and h.auto_precision is not None
            # Headline figures, formatted the French way.
            kpi = page.locator("#kpi-automation .value").inner_text()
            assert kpi == f"{100 * h.automation_rate:.1f} %".replace(".", ",")
            prec = page.locator("#kpi-precision .value").inner_text()
            assert prec == f"{100 * h.auto_precision:.1f} %".replace(".", ",")
            assert "objectif national" in page.locator("#verdict").inner_text()
            assert page.locator("#kpi-stays").is_visible() and page.locator("#kpi-workload").is_visible()
            # The plots are drawn: curves with points, chapter bars, reliability diagram.
            for chart in ("#automation-curve", "#chapter-bars", "#reliability"):
                box = page.locator(chart).bounding_box()
                assert box is not None and box["width"] > 300 and box["height"] > 150, chart
            assert page.locator("#automation-curve polyline.series").count() >= 3
            assert page.locator("#chapter-bars rect.bar").count() >= 5
            assert page.locator("#reliability polyline.series").count() == 2
            assert page.locator("#errors-table tr").count() >= 2
            shot = Path(os.environ.get("CIMCODER_REPORT_SCREENSHOT", tmp_path / "report.png"))
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
        finally:
            browser.close()
    assert requests, "the page itself was requested"
    outside = [u for u in requests if not u.startswith("file://")]
    assert outside == [], f"the report made external requests: {outside}"
