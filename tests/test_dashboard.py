"""The live dashboard, end to end in headless Chromium (Debian's, driven by Playwright for
Python): requests submitted and slots leased appear on the page, then the answers and the
statistics agent's windows. Without Chromium or Playwright it skips saying why (and fails
under INFERENCE_TEST_STRICT=1, as in CI)."""

from __future__ import annotations

import asyncio
import os
import shutil

from inference_allocator.producers.client import InferenceClient

from .conftest import missing_tool
from .helpers import stats_agent

# The flags this machine's Chromium needs (no sandbox as root, no background networking on
# a closed network), from the machine's notes.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def _chromium() -> str:
    path = os.environ.get("INFERENCE_TEST_CHROMIUM") or shutil.which("chromium")
    if not path:
        missing_tool(
            "the dashboard test needs Chromium: `apt-get install chromium` (Debian), or "
            "INFERENCE_TEST_CHROMIUM=/path/to/chromium"
        )
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        missing_tool("the dashboard test needs Playwright for Python: pip install playwright")
    return str(path)


async def test_the_dashboard_shows_slots_queue_answers_and_statistics(
    make_settings, start_worker, start_bridge, tmp_path
):
    chromium = _chromium()
    from playwright.async_api import async_playwright

    settings = make_settings(gpu_count=2, mock_latency_ms=3000)
    await start_worker(settings)
    http = await start_bridge(settings)
    async with stats_agent(settings, tmp_path / "stats.log"):
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = await browser.new_page(viewport={"width": 1400, "height": 900})
            await page.goto(str(http.base_url))
            await page.wait_for_selector("#summary:has-text('slots free')")
            async with InferenceClient(settings) as client:
                calls = [
                    asyncio.create_task(client.infer("llama-3-70b", f"job {i}", priority))
                    for i, priority in enumerate(("high", "low", "low"))
                ]
                # Two run, one waits: the page shows both leases and the waiting one.
                await page.wait_for_function(
                    "document.querySelectorAll('#slots tr.leased').length == 2", timeout=15_000
                )
                leased = await page.eval_on_selector_all(
                    "#slots tr.leased", "rows => rows.map(r => r.dataset.request)"
                )
                await page.wait_for_selector("#depth:has-text('now: 0 / 0 / 1')", timeout=15_000)
                assert await page.locator("#queue polyline").count() == 3
                answers = await asyncio.gather(*calls)
            assert set(leased) < {a.request_id for a in answers}
            for answer in answers:
                await page.wait_for_selector(
                    f"#recent tr[data-request='{answer.request_id}']", timeout=15_000
                )
            await page.wait_for_selector("#stats td:has-text('llama-3-70b')", timeout=30_000)
            shot = os.environ.get("INFERENCE_TEST_SCREENSHOT") or str(tmp_path / "d.png")
            await page.screenshot(path=shot, full_page=True)
            await browser.close()
