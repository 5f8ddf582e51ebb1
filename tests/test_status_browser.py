"""The status pages in a real browser (issue 14): headless Chromium (Debian `chromium` and
`chromium-driver`, driven by Selenium with the system chromedriver) opens the pages the registered
`job_status` function serves through the dev host's HTTP server, and checks what a person sees.
Screenshots are saved in the test's temporary folder."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta

import pytest
from azure.storage.blob import BlobServiceClient

from pipeline import worker
from pipeline.dev.host import serve_http
from pipeline.ledger import Ledger
from tests.status_support import record_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="headless browser test needs Chromium and its driver: apt-get install chromium chromium-driver "
    "(.ci/run installs them)",
)
NOW = datetime.now(UTC).replace(microsecond=0)
HOSTILE = "<script>document.title='owned'</script>Nightly <b>export</b>"


@pytest.fixture
def browser(monkeypatch):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must never download a browser or driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1200,1400"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture
def site(azurite, unique_name, clean_env):
    ledger = Ledger(container=unique_name, service=BlobServiceClient.from_connection_string(azurite.connection_string))
    record_run(ledger, "880001", NOW - timedelta(days=2), files=[("BIBS_a_1.xml", 30000, None),
                                                                 ("BIBS_a_2.xml", 18213, {"leader-not-ascii": 3})])
    record_run(ledger, "880002", NOW - timedelta(days=1), fail="SFTP: file BIBS_b_2.xml not found on the server")
    record_run(ledger, "880003", NOW - timedelta(hours=3), job_name=HOSTILE)
    worker.set_context(worker.Context(ledger_factory=lambda: ledger))
    server = serve_http()
    yield f"http://127.0.0.1:{server.server_port}/api/status"
    server.shutdown()
    worker.set_context(None)


def text(driver, css):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, css).text


def test_a_person_sees_runs_counts_reasons_and_the_chart(browser, site, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(site + "?code=test-key")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Export job runs"
    rows = {r.get_attribute("data-instance"): r for r in browser.find_elements(By.CSS_SELECTOR, "#runs tbody tr")}
    assert list(rows) == ["880003", "880002", "880001"]  # newest first
    done = rows["880001"].text
    assert "done" in done and "48,213" in done and "48,210" in done and "3 × leader-not-ascii" in done
    assert "Dropbox /Alma exports/Export Bibliographic Records/" in done
    failed = rows["880002"].text
    assert "failed" in failed and "SFTP: file BIBS_b_2.xml not found on the server" in failed
    assert "python -m pipeline requeue 880002" in failed

    # The chart: one bar per run in each row, each with its numbers as a tooltip title.
    charts = browser.find_elements(By.CSS_SELECTOR, "svg.chart")
    assert [c.get_attribute("data-series") for c in charts] == ["records_out", "rejected"]
    bars = charts[0].find_elements(By.TAG_NAME, "rect")
    assert [b.size["height"] > 0 for b in bars] == [True, False, True]  # oldest first; the failed run wrote none
    assert "48,210 records out" in bars[0].find_element(By.TAG_NAME, "title").get_attribute("textContent")
    assert charts[0].size["width"] > 100

    # Hostile values are text: the title is unchanged, no script ran, the name reads literally.
    assert browser.title == "Export job runs – Alma export pipeline"
    assert rows["880003"].find_element(By.TAG_NAME, "a").text == HOSTILE
    assert browser.execute_script("return document.querySelectorAll('main script, main b').length") == 0
    browser.save_screenshot(str(tmp_path / "status.png"))

    # The failed run's page, reached by its link: the reason and what to run.
    rows["880002"].find_element(By.TAG_NAME, "a").click()
    assert "/api/status/880002?code=test-key" in browser.current_url
    assert text(browser, "#state") == "failed"
    assert text(browser, "#reason") == "BIBS_880002_1.xml: SFTP: file BIBS_b_2.xml not found on the server"
    assert "python -m pipeline requeue 880002" in browser.find_element(By.TAG_NAME, "main").text
    browser.save_screenshot(str(tmp_path / "status-880002.png"))

    # On a phone-sized screen the page does not scroll sideways (wide tables scroll in their box).
    browser.set_window_size(390, 844)
    browser.get(site + "?code=test-key")
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")
    browser.save_screenshot(str(tmp_path / "status-phone.png"))
    for name in ("status.png", "status-880002.png", "status-phone.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_instance_page_of_a_hostile_name_shows_it_as_text(browser, site):
    from selenium.webdriver.common.by import By

    browser.get(site + "/880003?code=k")
    assert browser.find_element(By.TAG_NAME, "h1").text.startswith(HOSTILE)
    assert browser.execute_script("return document.querySelectorAll('script').length") == 0
    assert browser.title.startswith(HOSTILE)
