"""The explorer in a real browser: the OS's headless Chromium, driven by selenium through the
OS's chromedriver, against ``python -m app`` holding references of several elements whose
sessions are dated (so drift is scored). What the page shows is compared with what the API
answers to the same questions.

Each view is saved as a screenshot in the test's temporary folder; with EXPLORER_SCREENSHOTS
set to a folder (``make explorer-screenshots``: docs/) a small copy of each goes there too.
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote, urlparse

import httpx
import numpy as np
import pytest

from tests.app.conftest import Server
from tests.app.helpers import npz_body
from training.synthetic import SynthConfig, generate

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip(
        "browser tests need Chromium and its driver: apt-get install chromium chromium-driver",
        allow_module_level=True,
    )
webdriver = pytest.importorskip("selenium.webdriver", reason="pip install -e '.[dev]' (selenium)")
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

WIDE, PHONE = (1280, 900), (390, 844)
KEY = "s3cret-key"
DRIFT_409 = re.compile(r"/elements/(\S+)/drift - Failed to load resource: .* 409 ")


@pytest.fixture(scope="module")
def data():
    """Five elements of five dated sessions. The first element's latest session is recorded
    upside down, so it is flagged drifting whatever model the run trained (the generator's
    gradual drift was flagged in some runs and not in others); the last keeps only its three
    baseline sessions, so its drift is 409 (nothing to compare yet)."""
    config = SynthConfig(elements=5, sessions=5, min_sessions=5, signals=4, length=128, seed=21)
    full = generate(replace(config, drift_fraction=0.4))
    elements, session = sorted(set(full.element_ids)), full.extras["session_index"]
    flipped = (full.element_ids == elements[0]) & (session == 4)
    full.signals[flipped] *= -1
    keep = ~((full.element_ids == elements[-1]) & (session >= 3))
    return full.subset(np.flatnonzero(keep))


def load(server: Server, data, headers: dict | None = None) -> None:
    body = npz_body(
        data,
        recorded_at=data.extras["recorded_at"],
        ids=np.array([f"ref-{i}" for i in range(len(data))]),
    )
    response = httpx.post(
        f"{server.url}/references/npz", content=body, headers=headers, timeout=120
    )
    assert response.status_code == 201, response.text


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory, data):
    server = Server(model_dir, tmp_path_factory.mktemp("explorer_browser") / "data").start()
    load(server, data)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # tests may run as root in a container, where the sandbox cannot
        "--disable-dev-shm-usage",
        "--force-device-scale-factor=1",
        f"--window-size={WIDE[0]},{WIDE[1]}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("explorer_screenshots")


def screenshot(driver, folder: Path, name: str, publish: bool = False) -> None:
    """The whole page, not only the window, into ``folder``; one to ``publish`` also, reduced
    to 64 colours, into EXPLORER_SCREENSHOTS when that is set."""
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    (folder / f"{name}.png").write_bytes(base64.b64decode(shot["data"]))
    published = os.environ.get("EXPLORER_SCREENSHOTS")
    if publish and published:
        from PIL import Image  # matplotlib's dependency: only needed here

        Path(published).mkdir(parents=True, exist_ok=True)
        image = Image.open(folder / f"{name}.png").convert("RGB")
        # octree keeps the few saturated colours (keypoints); median cut merged two of them
        small = image.quantize(colors=64, method=Image.Quantize.FASTOCTREE)
        small.save(Path(published) / f"explorer-{name}.png", optimize=True)


def wait(driver, condition, timeout: float = 30):
    """Until ``condition`` holds; an element the page replaced while it was looked at (a view
    re-rendering, seen on a loaded machine) counts as not yet."""
    return WebDriverWait(
        driver, timeout, ignored_exceptions=(StaleElementReferenceException,)
    ).until(lambda d: condition(d))


def severe(driver) -> list[str]:
    """Console errors since the last call (failed requests included)."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def besides_nothing_to_compare(driver, element: str) -> list[str]:
    """Console errors other than the API's 409s for the ``element`` with nothing to compare
    yet, which the page reports as such."""
    return [e for e in severe(driver) if (m := DRIFT_409.search(e)) is None or m[1] != element]


def api(server: Server, method: str, path: str, **kwargs):
    response = httpx.request(method, f"{server.url}{path}", timeout=60, **kwargs)
    assert response.status_code == 200, response.text
    return response.json()


def drift_state(server: Server, element: str) -> str:
    response = httpx.get(f"{server.url}/elements/{quote(element, safe='')}/drift", timeout=60)
    if response.status_code == 409:
        return "nothing-to-compare"
    latest = response.json()["sessions"][-1]
    return "drifting" if latest["drifting"] else "stable"


ELEMENT_ROWS = """return [...document.querySelectorAll('#elements tbody tr')].map(r => [
    r.dataset.element, r.cells[1].textContent, r.cells[2].textContent,
    r.querySelector('.drift').dataset.state])"""


def test_the_elements_view_shows_what_the_api_holds(server, browser, shots):
    browser.get(f"{server.url}/")  # the root leads to the explorer
    assert urlparse(browser.current_url).path == "/ui/"
    rows = wait(
        browser,
        lambda d: (r := d.execute_script(ELEMENT_ROWS)) and all(x[3] != "loading" for x in r) and r,
    )
    stored = api(server, "GET", "/elements")["items"]
    assert rows == [
        [
            e["element_id"],
            str(e["references"]),
            str(e["sessions"]),
            drift_state(server, e["element_id"]),
        ]
        for e in stored
    ]
    assert {row[3] for row in rows} >= {"nothing-to-compare", "drifting"}
    assert browser.find_element(By.ID, "element-range").text == f"1–5 of {len(stored)}"
    # the one console error is the API's 409 for the element with nothing to compare yet
    errors = severe(browser)
    assert [DRIFT_409.search(e).group(1) for e in errors] == [stored[-1]["element_id"]], errors
    screenshot(browser, shots, "elements", publish=True)

    box = browser.find_element(By.ID, "element-filter")
    box.send_keys("0003", Keys.ENTER)
    wait(
        browser,
        lambda d: [r[0] for r in d.execute_script(ELEMENT_ROWS)] == [stored[3]["element_id"]],
    )
    assert "q=0003" in browser.current_url and severe(browser) == []


def sessions_in_time_order(server: Server, element: str) -> list[str]:
    refs = api(server, "GET", "/references", params={"element_id": element})["items"]
    first: dict[str, str] = {}
    for r in sorted(refs, key=lambda r: r["recorded_at"]):
        first.setdefault(r["session_id"], r["recorded_at"])
    return list(first)


def test_the_element_view_draws_sessions_signals_drift_and_the_average(server, browser, shots):
    element = api(server, "GET", "/elements")["items"][0]["element_id"]
    browser.get(f"{server.url}/ui/#/element/{quote(element, safe='')}")
    charts = ("#overlay-chart canvas", "#drift-chart canvas", "#average-chart canvas")
    wait(browser, lambda d: all(d.find_elements(By.CSS_SELECTOR, c) for c in charts))

    rows = browser.find_elements(By.CSS_SELECTOR, "#sessions tbody tr")
    assert [r.get_attribute("data-session") for r in rows] == sessions_in_time_order(
        server, element
    )
    report = api(server, "GET", f"/elements/{quote(element, safe='')}/drift")
    expected = ["baseline"] * len(report["baseline"]["sessions"]) + [
        "drifting" if s["drifting"] else "stable" for s in report["sessions"]
    ]
    assert [r.find_element(By.CSS_SELECTOR, "[data-state]").text for r in rows] == expected
    drawn = browser.find_elements(By.CSS_SELECTOR, "#overlay-part .references a")
    assert len(drawn) == 16  # a sample of the element's 20 references
    caption = browser.find_element(By.CSS_SELECTOR, "#average-part figcaption").text
    assert caption.startswith("Mean ± SD of 16 references aligned")
    assert severe(browser) == []
    screenshot(browser, shots, "element", publish=True)

    baseline_only = api(server, "GET", "/elements")["items"][-1]["element_id"]
    browser.get(f"{server.url}/ui/#/element/{quote(baseline_only, safe='')}")
    wait(browser, lambda d: "Nothing to compare yet" in d.find_element(By.ID, "drift-part").text)
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#average-chart canvas"))
    assert [DRIFT_409.search(e).group(1) for e in severe(browser)] == [baseline_only]


KEYPOINTS = """return [...document.querySelectorAll('#keypoints li')].map(li => [
    li.dataset.name, Number(li.dataset.position), Number(li.dataset.confidence)])"""
NEIGHBOURS = """return [...document.querySelectorAll('#neighbours tbody tr')].map(r => [
    r.dataset.id, r.cells[2].textContent, r.cells[3].textContent, r.cells[4].textContent])"""


def shown_analysis(driver, title: str) -> tuple[list, list]:
    wait(driver, lambda d: title in d.find_element(By.ID, "signal-result").text)
    wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#signal-chart canvas"))
    return driver.execute_script(KEYPOINTS), driver.execute_script(NEIGHBOURS)


def expected_analysis(server: Server, signal, k: int, **search) -> tuple[list, list, dict]:
    points = api(server, "POST", "/keypoints", json={"signals": [signal]})["keypoints"][0]
    found = api(server, "POST", "/search", json={"signals": [signal], "k": k, **search})
    result = found["results"][0]
    keypoints = [[p["name"], p["position"], p["confidence"]] for p in points]
    neighbours = [
        [n["id"], n["element_id"], n["session_id"], f"{n['similarity']:.3f}"]
        for n in result["neighbors"]
    ]
    return keypoints, neighbours, result


def test_a_stored_reference_with_its_keypoints_neighbours_and_verdict(server, browser, shots):
    reference = api(server, "GET", "/references/ref-5")
    browser.get(f"{server.url}/ui/#/signal?ref=ref-5&k=5")
    keypoints, neighbours = shown_analysis(browser, "Reference ref-5")
    want_keypoints, want_neighbours, result = expected_analysis(
        server, reference["signal"], 5, exclude_session_id=reference["session_id"], explain=True
    )
    names = api(server, "GET", "/model")["keypoint_names"]
    assert [k[0] for k in keypoints] == names  # one marker per keypoint, at the API's positions
    assert keypoints == want_keypoints
    assert neighbours == want_neighbours and len(neighbours) == 5
    assert reference["session_id"] not in {n[2] for n in neighbours}
    verdict = browser.find_element(By.ID, "verdict").text
    assert result["predicted_element"]["element_id"] in verdict
    known = browser.find_element(By.ID, "known").text
    flag = result["predicted_element"]["known"]
    assert known.startswith({True: "yes", False: "no:", None: "not calibrated"}[flag])
    score = browser.find_element(By.ID, "anomaly-score").text
    assert score == f"{result['anomaly']['score']:.3f}"
    # the anomaly map drawn under the signal, its peak where the API puts it
    assert browser.find_element(By.ID, "anomaly-map-chart").is_displayed()
    assert browser.find_element(By.ID, "anomaly-peak").text == str(result["anomaly"]["peak"])
    assert severe(browser) == []
    screenshot(browser, shots, "signal", publish=True)


def test_a_pasted_signal_and_a_dropped_npy_file(server, browser, tmp_path):
    signal = api(server, "GET", "/references/ref-30")["signal"]
    browser.get(f"{server.url}/ui/#/signal")
    numbers = browser.find_element(By.ID, "signal-numbers")
    browser.execute_script(
        "arguments[0].value = arguments[1]", numbers, ", ".join(map(str, signal))
    )
    browser.find_element(By.CSS_SELECTOR, "#own-form button[type=submit]").click()
    keypoints, neighbours = shown_analysis(browser, "Pasted numbers")
    want_keypoints, want_neighbours, _ = expected_analysis(server, signal, 5)
    assert keypoints == want_keypoints and neighbours == want_neighbours
    assert neighbours[0][0] == "ref-30"  # stored, so its own nearest

    batch = np.stack([np.asarray(signal, dtype=np.float32), np.zeros(len(signal), np.float32)])
    np.save(tmp_path / "two.npy", batch)
    browser.find_element(By.ID, "signal-file").send_keys(str(tmp_path / "two.npy"))
    keypoints, neighbours = shown_analysis(browser, "two.npy (first of 2 signals)")
    assert keypoints == want_keypoints and neighbours == want_neighbours
    assert severe(browser) == []


def npy_bytes(array: np.ndarray, version: tuple[int, int]) -> str:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, version=version)
    return base64.b64encode(buffer.getvalue()).decode()


PARSE = """const [kind, payload, done] = arguments;
import('/ui/js/signal-input.js').then((m) => {
  try {
    if (kind === 'text') return done({ok: m.parseText(payload)});
    const bytes = Uint8Array.from(atob(payload), (c) => c.charCodeAt(0));
    done({ok: m.parseNpy(bytes.buffer)});
  } catch (error) { done({error: error.message}); }
});"""


@pytest.mark.parametrize("dtype", ["<f4", "<f8", "<i2", "<i8", "|u1", "|i1", "<u4"])
def test_npy_files_are_read_as_the_api_reads_them(server, browser, dtype):
    browser.get(f"{server.url}/ui/#/signal")  # the module is imported from the page's origin
    values = np.arange(24).reshape(2, 3, 4)
    for array, version in [(values[0, 0], (1, 0)), (values[:, 0], (2, 0)), (values, (1, 0))]:
        parsed = browser.execute_async_script(PARSE, "npy", npy_bytes(array.astype(dtype), version))
        expected = array[0].tolist() if array.ndim > 1 else array.tolist()
        assert parsed == {"ok": {"signal": expected, "count": 1 if array.ndim == 1 else 2}}
    refused = browser.execute_async_script(PARSE, "npy", npy_bytes(values[0].astype(">f4"), (1, 0)))
    assert "little-endian" in refused["error"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1, 2.5, -3e-1", [1, 2.5, -0.3]),
        ("1\n2\n3\n", [1, 2, 3]),
        ("a;b\n1;10\n2;20\n3;30", [[1, 2, 3], [10, 20, 30]]),  # a header and two channels
        ("1 2 nope", "line 1: 'nope' is not a finite number"),
        ("1,2\n3", "lines hold different numbers of values: give one channel per column"),
    ],
)
def test_pasted_text_becomes_a_signal_or_a_reason(server, browser, text, expected):
    browser.get(f"{server.url}/ui/#/signal")
    parsed = browser.execute_async_script(PARSE, "text", text)
    assert parsed == ({"error": expected} if isinstance(expected, str) else {"ok": expected})


UNLABELLED = """return [...document.querySelectorAll('input, textarea, select')]
    .filter(e => e.labels.length === 0).map(e => e.outerHTML)"""
OVERFLOW = "return document.documentElement.scrollWidth - window.innerWidth"


def test_keyboard_labels_and_a_phone_sized_screen(server, browser, shots):
    browser.get(f"{server.url}/ui/#/elements")
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#elements tbody a"))
    first = browser.find_element(By.CSS_SELECTOR, "#elements tbody a")
    element = first.text
    for _ in range(20):  # Tab from the top of the page to the first element's link
        ActionChains(browser).send_keys(Keys.TAB).perform()
        if browser.switch_to.active_element == first:
            break
    assert browser.switch_to.active_element == first
    ActionChains(browser).send_keys(Keys.ENTER).perform()
    # the new view's heading has the focus: the next Tab goes on from there
    wait(browser, lambda d: d.switch_to.active_element.tag_name == "h2")
    assert browser.switch_to.active_element.text == f"Element {element}"

    for view in ("#/elements", "#/signal"):
        browser.get(f"{server.url}/ui/{view}")
        wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "h2"))
        assert browser.execute_script(UNLABELLED) == []

    browser.set_window_size(*PHONE)
    try:
        for name, view, ready in [
            ("elements", "#/elements", "#elements [data-state=drifting]"),
            ("element", "#/element/" + quote(element, safe=""), "#average-chart canvas"),
            ("signal", "#/signal?ref=ref-5", "#signal-chart canvas"),
        ]:
            browser.get(f"{server.url}/ui/{view}")
            wait(browser, lambda d, ready=ready: d.find_elements(By.CSS_SELECTOR, ready))
            assert browser.execute_script(OVERFLOW) <= 0, f"{name} scrolls sideways on a phone"
        screenshot(browser, shots, "phone")
    finally:
        browser.set_window_size(*WIDE)
    baseline_only = api(server, "GET", "/elements")["items"][-1]["element_id"]
    assert besides_nothing_to_compare(browser, baseline_only) == []


@pytest.fixture(scope="module")
def locked_server(model_dir, tmp_path_factory, data):
    """Reads need the key too."""
    env = {"HSN_API_KEY": KEY, "HSN_AUTH_READS": "true"}
    server = Server(model_dir, tmp_path_factory.mktemp("explorer_locked") / "data", **env).start()
    load(server, data, headers={"Authorization": f"Bearer {KEY}"})
    yield server
    server.stop()


def key_dialog_says(driver, text: str) -> bool:
    dialog = driver.find_element(By.ID, "key-dialog")
    return dialog.get_attribute("open") is not None and text in dialog.text


def test_the_page_asks_for_the_api_key_and_says_when_it_is_wrong(locked_server, browser, shots):
    url = locked_server.url
    browser.get(f"{url}/ui/#/elements")
    wait(browser, lambda d: key_dialog_says(d, "This service needs an API key to read."))
    browser.find_element(By.ID, "key-input").send_keys("not-the-key", Keys.ENTER)
    wait(browser, lambda d: key_dialog_says(d, "The API key was not accepted"))
    assert "missing or wrong API key" in browser.find_element(By.ID, "key-message").text
    screenshot(browser, shots, "api-key")
    browser.find_element(By.ID, "key-input").send_keys(KEY, Keys.ENTER)
    rows = wait(browser, lambda d: d.execute_script(ELEMENT_ROWS))
    headers = {"Authorization": f"Bearer {KEY}"}
    stored = api(locked_server, "GET", "/elements", headers=headers)["items"]
    assert [r[0] for r in rows] == [e["element_id"] for e in stored]
    assert browser.execute_script("return sessionStorage.getItem('hsn-api-key')") == KEY
    # the refusals are the console's only errors (besides the element with nothing to compare)
    refusals = besides_nothing_to_compare(browser, stored[-1]["element_id"])
    assert refusals and all(" 401 " in e for e in refusals), refusals

    browser.execute_script("sessionStorage.clear()")
    browser.refresh()
    wait(browser, lambda d: key_dialog_says(d, "needs an API key"))
    browser.find_element(By.ID, "key-cancel").click()
    alert = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "main [role=alert]"))
    assert alert[0].text == "No API key given: this service needs one to read."
    assert all(" 401 " in e for e in severe(browser))


def test_the_page_says_when_a_key_may_not_read_here(locked_server, browser):
    """A key of another collection gets 403: the page asks for another key, saying why."""
    env = {k: v for k, v in locked_server.env.items() if k.startswith("HSN_")}
    made = subprocess.run(
        [sys.executable, "-m", "app", "keys", "create", "--scope", "read", "--collection", "ecg"],
        env={**os.environ, **env, "HSN_API_KEY": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    secret = re.search(r"secret: (\S+)", made.stdout).group(1)
    time.sleep(0.5)  # the server reloads its keys within HSN_SYNC_INTERVAL_MS (200 ms)
    browser.get(f"{locked_server.url}/ui/#/elements")
    browser.execute_script("sessionStorage.clear()")
    browser.refresh()
    wait(browser, lambda d: key_dialog_says(d, "needs an API key"))
    browser.find_element(By.ID, "key-input").send_keys(secret, Keys.ENTER)
    wait(browser, lambda d: key_dialog_says(d, "This API key may not do that"))
    assert "collections ecg" in browser.find_element(By.ID, "key-message").text
    browser.find_element(By.ID, "key-input").send_keys(KEY, Keys.ENTER)
    wait(browser, lambda d: d.execute_script(ELEMENT_ROWS))


def test_the_collection_picker_shows_another_collection_and_keeps_it_in_the_url(
    server, browser, data
):
    made = httpx.post(f"{server.url}/collections", json={"name": "other"}, timeout=60)
    assert made.status_code == 201, made.text
    two = data.subset(np.flatnonzero(np.isin(data.element_ids, sorted(set(data.element_ids))[:2])))
    response = httpx.post(
        f"{server.url}/collections/other/references/npz",
        content=npz_body(two, recorded_at=two.extras["recorded_at"]),
        timeout=120,
    )
    assert response.status_code == 201, response.text
    picker = (
        "return [...document.querySelectorAll('#collection-picker option')]"
        ".map(o => [o.value, o.selected])"
    )

    browser.get(f"{server.url}/ui/?collection=other#/elements")
    rows = wait(browser, lambda d: (r := d.execute_script(ELEMENT_ROWS)) and r)
    stored = api(server, "GET", "/collections/other/elements")["items"]
    assert [r[0] for r in rows] == [e["element_id"] for e in stored] and len(rows) == 2
    options = wait(browser, lambda d: len(o := d.execute_script(picker)) == 2 and o)
    assert options == [["default", False], ["other", True]]

    browser.execute_script(
        "const p = document.getElementById('collection-picker');"
        " p.value = 'default'; p.dispatchEvent(new Event('change'));"
    )
    wait(browser, lambda d: "collection=" not in d.current_url)
    rows = wait(browser, lambda d: len(r := d.execute_script(ELEMENT_ROWS)) > 2 and r)
    assert [r[0] for r in rows] == [
        e["element_id"] for e in api(server, "GET", "/elements")["items"]
    ]
    assert urlparse(browser.current_url).fragment == "/elements"
