"""The dashboard in a real headless Chromium (Debian's), driven by Playwright."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from campaignd.testing import DaemonProcess

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


@pytest.fixture
def chromium_path() -> str:
    if not Path(CHROMIUM).exists():
        message = ("Chromium not installed: `apt-get install chromium` (scripts/test does it "
                   "when run as root)")
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return CHROMIUM


def test_dashboard_shows_the_running_daemon(tmp_path: Path, chromium_path: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    with DaemonProcess(tmp_path) as d:
        d.wait_running()
        with sync_playwright() as pw:
            # rebind.test resolves to 127.0.0.1, as an attacker's name would (DNS rebinding)
            browser = pw.chromium.launch(executable_path=chromium_path, args=[
                *CHROMIUM_FLAGS, "--host-resolver-rules=MAP rebind.test 127.0.0.1"])
            try:
                page = browser.new_page()
                page.goto(d.base_url + "/")
                expect(page.locator("#state")).to_have_text("running", timeout=20_000)
                row = page.locator("#campaigns tbody tr").first
                expect(row).to_contain_text("madhive_12345")
                expect(row).to_contain_text("432")
                # the day's paced budget beside the daily cap, as the API has it
                today = d.status()[1]["campaigns"][0]["budget_today"]
                expect(row).to_contain_text(f"{today} USD")
                expect(page.locator("#agents tbody")).to_contain_text("monitor")
                expect(page.locator("#dsp tbody")).to_contain_text("sandbox")
                page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
                # Under another name the daemon serves neither the page nor its data.
                port = d.base_url.rsplit(":", 1)[1]
                evil = browser.new_page()
                answer = evil.goto(f"http://rebind.test:{port}/")
                assert answer is not None and answer.status == 400
                assert "http.allowed_hosts" in evil.content()
                status = evil.evaluate("fetch('/api/v1/status').then(r => r.status)")
                assert status == 400
                evil.close()
                # With the daemon gone, the page says so instead of showing stale numbers.
                assert d.stop() == 0
                expect(page.locator("#state")).to_have_text("unreachable", timeout=10_000)
            finally:
                browser.close()
