"""The web playground at `/` on the demo application: its files over HTTP (allow-list, content types, no path
traversal, public, not in the OpenAPI schema), and the page itself driven in headless Chromium (Debian's
`chromium` + `chromium-driver` through Selenium; nothing is downloaded): Compare on two modes with live
progress, the VRAM panel, history, and a Cancel that stops the generation on the server.
"""

from __future__ import annotations

import base64
import http.client
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from deployments.router.frontends.playground import STATIC_FILES, page_html
from tests.unit.runner_helpers import pixels

pytestmark = pytest.mark.serve

STATIC_DIR = Path(__file__).resolve().parents[2] / "serve_app" / "static"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMEDRIVER = shutil.which("chromedriver")
PAGE_SIZE = (1280, 800)


@pytest.fixture(scope="module")
def client(demo_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=demo_url, timeout=300) as c:
        yield c


def raw_get(base_url: str, path: str) -> tuple[int, bytes]:
    """GET `path` exactly as written (no client-side `..` normalisation, unlike httpx and browsers)."""
    url = urlsplit(base_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_page_is_public_html_that_loads_only_its_own_files(client: httpx.Client) -> None:
    r = client.get("/")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/html")
    page = r.text
    assert '<base href="/">' in page  # the demo is mounted at /
    assert '<script type="module" src="static/playground.js">' in page
    assert "http://" not in page and "https://" not in page  # no CDN: the page works offline
    for name in ("playground.css", "playground.js", "favicon.svg"):
        assert f"static/{name}" in page


def test_the_page_follows_the_route_prefix_it_is_mounted_under() -> None:
    assert '<base href="/">' in page_html("") and '<base href="/">' in page_html("/")
    assert '<base href="/lab/">' in page_html("/lab")
    assert '<base href="/x&quot;&gt;/">' in page_html('/x">')  # escaped: a prefix cannot inject markup


@pytest.mark.parametrize("name", sorted(STATIC_FILES))
def test_static_files_answer_with_their_content_type(client: httpx.Client, name: str) -> None:
    r = client.get(f"/static/{name}")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].split(";")[0] == STATIC_FILES[name].split(";")[0]
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.content == (STATIC_DIR / name).read_bytes()
    if name.endswith(".js"):  # no external URL in the code either (the page must work offline)
        assert "https://" not in r.text and "http://" not in r.text


def test_the_page_loads_every_static_file_it_lists() -> None:
    """Every script imported and every file the page names is on the allow-list (else it would 404)."""
    page = (STATIC_DIR / "index.html").read_text()
    named = {name for name in STATIC_FILES if f"static/{name}" in page}
    for script in STATIC_DIR.glob("*.js"):
        named |= {name for name in STATIC_FILES if f'from "./{name}"' in script.read_text()}
        assert script.name in STATIC_FILES, f"{script.name} is not on the allow-list"
    assert named == set(STATIC_FILES), set(STATIC_FILES) - named


@pytest.mark.parametrize("path", [
    "/static/../pyproject.toml", "/static/..%2Fpyproject.toml", "/static/%2e%2e%2fpyproject.toml",
    "/static/..%2F..%2Fpyproject.toml", "/static/../../../../etc/passwd", "/static/..", "/static/%2e%2e",
    "/static/index.html", "/static/api.js.map", "/static/", "/static/.%2Fapi.js",
])
def test_static_refuses_anything_off_the_allow_list(demo_url: str, path: str) -> None:
    status, body = raw_get(demo_url, path)
    assert status in (400, 404), (path, status, body[:200])
    assert b"[build-system]" not in body and b"root:" not in body and b"<html" not in body


def test_unknown_static_file_is_a_native_json_404(client: httpx.Client) -> None:
    r = client.get("/static/secrets.json")
    assert r.status_code == 404
    assert r.json()["error"]["type"] == "not_found_error"


def test_playground_routes_are_not_in_the_schema(client: httpx.Client) -> None:
    """(That they need no key, with keys on, is checked on the keyed app of test_access_and_faults.)"""
    paths = client.get("/openapi.json").json()["paths"]
    assert "/" not in paths and not any(p.startswith("/static") for p in paths)


# -- the page in a real browser ------------------------------------------------------------------------
@pytest.fixture
def browser() -> Iterator[Any]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("no Chromium/chromedriver installed (Debian: apt-get install chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is a dev dependency: pip install -e '.[dev]'")
    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--disable-extensions", "--no-first-run", f"--window-size={PAGE_SIZE[0]},{PAGE_SIZE[1]}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": PAGE_SIZE[0], "height": PAGE_SIZE[1], "deviceScaleFactor": 1, "mobile": False})
    driver.set_script_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: Any, condition: Any, timeout_s: float, what: str) -> Any:
    """`condition`'s first truthy answer; an element the page redrew meanwhile (it refreshes the modes and the
    VRAM panel every few seconds) is looked up again on the next poll."""
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout_s, poll_frequency=0.1,
                             ignored_exceptions=(StaleElementReferenceException,)).until(condition)
    except TimeoutException:
        state = driver.execute_script("return document.getElementById('results').outerHTML.slice(0, 3000)")
        raise AssertionError(f"timed out waiting for {what}; results: {state}") from None


def open_page(driver: Any, url: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{url}/")
    wait_for(driver, lambda d: d.find_element(By.ID, "mode-list").get_attribute("data-loaded") == "true", 60,
             "the modes")


def pick_modes(driver: Any, names: set[str]) -> None:
    from selenium.webdriver.common.by import By

    def picked(d: Any) -> bool:
        for box in d.find_elements(By.CSS_SELECTOR, "#mode-list input[type=checkbox]"):
            wanted = box.get_attribute("value") in names
            if box.is_enabled() and box.is_selected() != wanted:
                box.click()
        return {b.get_attribute("value") for b in d.find_elements(By.CSS_SELECTOR, "#mode-list input:checked")} == names

    wait_for(driver, picked, 30, f"modes {sorted(names)} picked")


def cell_image_b64(driver: Any, mode: str) -> str:
    """The bytes of the image the page shows for `mode` (a blob URL), base64."""
    return driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const img = document.querySelector(`.cell[data-mode="${arguments[0]}"] img`);
        fetch(img.src).then((r) => r.arrayBuffer()).then((buf) => {
          let s = ""; for (const b of new Uint8Array(buf)) s += String.fromCharCode(b); done(btoa(s));
        }).catch((err) => done(`failed: ${err}`));""", mode)


def test_compare_two_modes_with_live_progress_vram_and_history(demo_url: str, client: httpx.Client,
                                                                browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    d = browser
    open_page(d, demo_url)
    # img2img only: never sent a txt2img
    wait_for(d, lambda _: not d.find_element(By.ID, "mode-sdxl-refiner").is_enabled(), 10, "the refiner disabled")
    pick_modes(d, {"sd1", "sdxl"})
    wait_for(d, lambda _: d.find_element(By.ID, "compare").get_attribute("data-count") == "2", 10, "2 modes to compare")
    d.find_element(By.ID, "prompt").send_keys("a lighthouse at dusk")
    d.find_element(By.ID, "seed").send_keys("4242")
    d.find_element(By.ID, "steps").send_keys("5")
    # the samplers both modes serve, as /v1/modes lists them, and the chosen one's schedule types
    from selenium.webdriver.support.ui import Select

    listed = {m["name"]: m["samplers"] for m in client.get("/v1/modes").json()["modes"]}
    both = [name for name in listed["sd1"] if name in listed["sdxl"]]

    def options(select_id: str) -> list[str]:
        return [o.get_attribute("value") for o in d.find_elements(By.CSS_SELECTOR, f"#{select_id} option")][1:]

    wait_for(d, lambda _: options("scheduler") == both, 10, "the samplers of /v1/modes")
    Select(d.find_element(By.ID, "scheduler")).select_by_value("dpmpp_2m")
    wait_for(d, lambda _: options("schedule-type") == listed["sd1"]["dpmpp_2m"], 10, "dpmpp_2m's schedule types")
    Select(d.find_element(By.ID, "schedule-type")).select_by_value("karras")

    def lora_set(_: Any) -> bool:  # goes to the sdxl mode only (its family)
        box = d.find_element(By.ID, "lora-tiny-sdxl-lora")
        if not box.is_selected():
            box.click()
        weight = d.find_element(By.ID, "lora-weight-tiny-sdxl-lora")
        if weight.get_attribute("value") != "0.8":
            weight.clear()
            weight.send_keys("0.8")
        return box.is_selected() and weight.get_attribute("value") == "0.8"

    wait_for(d, lora_set, 30, "the LoRA picked at 0.8")
    d.find_element(By.ID, "compare").click()
    results = d.find_element(By.ID, "results")
    wait_for(d, lambda _: results.get_attribute("data-run") == "1" and results.get_attribute("data-state") == "done",
             300, "both images")

    cells = {c.get_attribute("data-mode"): c for c in d.find_elements(By.CSS_SELECTOR, "#results .cell")}
    assert set(cells) == {"sd1", "sdxl"}
    for mode, cell in cells.items():
        assert cell.get_attribute("data-state") == "done", cell.text
        assert int(cell.get_attribute("data-progress-events")) >= 1, cell.text  # live progress was drawn
        assert cell.get_attribute("data-step") == "5"
        bar = cell.find_element(By.CSS_SELECTOR, "progress")
        assert bar.get_attribute("value") == bar.get_attribute("max")  # full
        img = cell.find_element(By.CSS_SELECTOR, "img")
        assert d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) == 64
        link = cell.find_element(By.CSS_SELECTOR, "a.download")
        assert link.get_attribute("download") == f"dreamlab-{mode}-4242.png"
        assert "total" in cell.find_element(By.CSS_SELECTOR, ".timings").text
        # the same prompt and seed went to both modes: each image is what the API makes for them
        loras = [{"name": "tiny-sdxl-lora", "weight": 0.8}] if mode == "sdxl" else []
        sampler = {"scheduler": "dpmpp_2m", "schedule_type": "karras"}
        same = client.post("/v1/txt2img", json={"prompt": "a lighthouse at dusk", "mode": mode, "seed": 4242,
                                                 "steps": 5, "loras": loras, **sampler})
        assert same.status_code == 200, same.text
        shown = cell_image_b64(d, mode)
        assert shown == same.json()["images"][0]["b64"], mode
        if loras:  # and the LoRA made a difference, so the page did send it to this mode
            plain = client.post("/v1/txt2img", json={"prompt": "a lighthouse at dusk", "mode": mode, "seed": 4242,
                                                      "steps": 5, **sampler})
            assert plain.status_code == 200
            assert pixels(base64.b64decode(plain.json()["images"][0]["b64"])) != pixels(base64.b64decode(shown))

    stats = client.get("/v1/registry").json()
    assert stats["devices"]
    wait_for(d, lambda _: d.find_element(By.ID, "vram").get_attribute("data-state") == "ok", 30, "the VRAM panel")
    for device in stats["devices"]:
        on_it = {m["mode"] for m in device["models"]}
        assert on_it

        def shown(_: Any, device: dict = device, on_it: set = on_it) -> bool:
            block = d.find_element(By.CSS_SELECTOR, f'#vram .device[data-device="{device["device"]}"]')
            listed = {li.get_attribute("data-mode") for li in block.find_elements(By.CSS_SELECTOR, ".models li")}
            return (device["device"].split(":")[-1] in block.text  # e.g. gpu0, shown with its node's short id
                    and bool(block.find_elements(By.CSS_SELECTOR, ".bar")) and on_it <= listed)  # its models

        wait_for(d, shown, 30, f"device {device['device']} with {sorted(on_it)} in the VRAM panel")

    history = d.find_elements(By.CSS_SELECTOR, "#history li img")
    assert len(history) == 2
    stored = d.execute_script("return JSON.parse(localStorage.getItem('dreamlab.history')).map(e => e.mode)")
    assert sorted(stored) == ["sd1", "sdxl"]

    d.execute_script("window.scrollTo(0, 0)")
    shot = tmp_path / "playground.png"
    assert d.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cancel_stops_the_generation_on_the_server(demo_url: str, client: httpx.Client, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    d = browser
    open_page(d, demo_url)
    pick_modes(d, {"sd1"})
    d.find_element(By.ID, "prompt").send_keys("a long one")
    for field, value in (("width", "256"), ("height", "256"), ("steps", "50"), ("num-images", "4")):
        d.find_element(By.ID, field).clear()
        d.find_element(By.ID, field).send_keys(value)
    d.find_element(By.ID, "prompt").send_keys("\n")  # Enter in the prompt submits
    cell = wait_for(d, lambda _: d.find_element(By.CSS_SELECTOR, '.cell[data-mode="sd1"]'), 30, "the cell")
    wait_for(d, lambda _: int(cell.get_attribute("data-progress-events")) >= 2, 300, "the first steps")
    d.find_element(By.ID, "cancel").click()
    cancelled_at = time.monotonic()
    wait_for(d, lambda _: cell.get_attribute("data-state") == "cancelled", 30, "the cancelled cell")
    assert "Cancelled" in cell.text
    assert d.find_element(By.ID, "results").get_attribute("data-state") == "done"
    eta_s = float(cell.get_attribute("data-eta"))  # what the rest would have taken, as the server measured it

    def sd1_inflight() -> int:
        replicas = client.get("/v1/registry").json()["replicas"].values()
        return sum(r["inflight"] for r in replicas if r["mode"] == "sd1")

    while sd1_inflight() and time.monotonic() < cancelled_at + eta_s:
        time.sleep(0.1)
    freed_after_s = time.monotonic() - cancelled_at
    print(f"sd1 freed {freed_after_s:.2f} s after Cancel; the rest would have taken {eta_s:.1f} s")
    # the replica is free again long before the remaining steps could have run: the closed stream stopped it
    assert sd1_inflight() == 0, f"sd1 still busy {freed_after_s:.1f} s after Cancel (eta was {eta_s:.1f} s)"
    assert freed_after_s < eta_s / 2, (freed_after_s, eta_s)
    r = client.post("/v1/txt2img", json={"prompt": "after", "mode": "sd1", "seed": 1}, headers={"Accept": "image/png"})
    assert r.status_code == 200 and r.content[:4] == b"\x89PNG"


def test_api_errors_are_shown_as_the_api_says_them(demo_url: str, client: httpx.Client, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    d = browser
    open_page(d, demo_url)
    pick_modes(d, {"sd1"})
    long_prompt = "x" * 4001  # over the mode's max_prompt_chars: the API refuses it before any work
    d.execute_script("document.getElementById('prompt').value = arguments[0]", long_prompt)
    expected = client.post("/v1/txt2img/stream", json={"prompt": long_prompt, "mode": "sd1"})
    assert expected.status_code == 422
    error = expected.json()["error"]
    d.find_element(By.ID, "compare").click()
    cell = wait_for(d, lambda _: d.find_element(By.CSS_SELECTOR, '.cell[data-mode="sd1"][data-state="error"]'), 60,
                    "the error")
    status = cell.find_element(By.CSS_SELECTOR, ".status").text
    assert status == f"422 {error['type']}: {error['message']} (param: {error['param']})"


def test_the_control_panel_sends_a_controlnet_unit_to_its_familys_modes(demo_url: str, client: httpx.Client,
                                                                         browser: Any, tmp_path: Path) -> None:
    from PIL import Image, ImageDraw
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    shape = Image.new("RGB", (64, 64), "black")
    ImageDraw.Draw(shape).rectangle((12, 16, 50, 44), fill="white")
    upload = tmp_path / "edges.png"
    shape.save(upload)
    d = browser
    open_page(d, demo_url)
    pick_modes(d, {"sd1", "sdxl"})
    d.find_element(By.ID, "prompt").send_keys("a castle")
    d.find_element(By.ID, "seed").send_keys("77")
    d.find_element(By.ID, "steps").send_keys("2")
    wait_for(d, lambda _: not d.find_element(By.ID, "control-box").get_attribute("hidden"), 30, "the control panel")
    d.find_element(By.ID, "control-image").send_keys(str(upload))
    wait_for(d, lambda _: d.find_element(By.ID, "control-image").get_attribute("data-ready") == "1", 10, "the upload")
    Select(d.find_element(By.ID, "control-model")).select_by_value("tiny-sd1-controlnet")
    wait_for(d, lambda _: len(Select(d.find_element(By.ID, "control-preprocessor")).options) > 1, 10, "modules")
    Select(d.find_element(By.ID, "control-preprocessor")).select_by_value("canny")
    weight = d.find_element(By.ID, "control-weight")
    weight.clear()
    weight.send_keys("0.8")
    d.find_element(By.ID, "compare").click()
    results = d.find_element(By.ID, "results")
    wait_for(d, lambda _: results.get_attribute("data-state") == "done", 300, "both images")

    image = base64.b64encode(upload.read_bytes()).decode()
    unit = {"model": "tiny-sd1-controlnet", "image": image, "preprocessor": "canny", "weight": 0.8}
    for mode, controls in (("sd1", [unit]), ("sdxl", [])):  # the SD1 ControlNet goes to the sd1 mode only
        same = client.post("/v1/txt2img", json={"prompt": "a castle", "mode": mode, "seed": 77, "steps": 2,
                                                 "controls": controls})
        assert same.status_code == 200, same.text
        # pixels: the infotext names the ControlNet with its hash once a replica has hashed it
        shown = pixels(base64.b64decode(cell_image_b64(d, mode)))
        assert shown == pixels(base64.b64decode(same.json()["images"][0]["b64"])), mode
    plain = client.post("/v1/txt2img", json={"prompt": "a castle", "mode": "sd1", "seed": 77, "steps": 2})
    assert pixels(base64.b64decode(plain.json()["images"][0]["b64"])) != pixels(
        base64.b64decode(cell_image_b64(d, "sd1")))
