"""What people look at, through Redis and a real detector process: `/v1/draw`, `/v1/status`,
crops from the detector and from the gateway's cache answers, and the try-it page in a real
headless Chromium (Debian's chromium + chromium-driver, driven by Selenium)."""

from __future__ import annotations

import base64
import io
import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from facestream.common.imaging.align import CROP_SIZE
from facestream.control.embedded import free_port
from tests.support.procs import Procs, base_env, gateway_ready

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gateway(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    prefix = f"looks{uuid.uuid4().hex[:8]}"
    port = free_port()
    procs = Procs(tmp_path_factory.mktemp("looks"), base_env(redis_url, prefix))
    procs.start("detector", ["-m", "facestream.detector"], FACESTREAM_CONSUMER="looks-det")
    procs.start("gateway", ["-m", "facestream.ingest"], FACESTREAM_HTTP_PORT=str(port))
    url = f"http://127.0.0.1:{port}"
    try:
        procs.wait_for(gateway_ready(url), "gateway ready")
        procs.wait_for(
            lambda: httpx.get(f"{url}/v1/status", timeout=2).json()["detectors"] == 1,
            "the detector advertised",
        )
        yield url
    finally:
        codes = procs.stop()
        assert codes == [0, 0], procs.logs()


def _pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB")).astype(np.int16)


def test_draw_answers_the_photo_with_its_faces(gateway: str, photo_png: dict[str, bytes]) -> None:
    photo = photo_png["astronaut"]
    first = httpx.post(f"{gateway}/v1/draw", content=photo, timeout=60)
    assert first.status_code == 200, first.text
    assert first.headers["content-type"] == "image/jpeg"
    assert first.headers["x-facestream-faces"] == "1"
    assert first.headers["x-facestream-cached"] == "false"
    before, after = _pixels(photo), _pixels(first.content)
    assert after.shape == before.shape  # same size as the input
    result = httpx.post(f"{gateway}/v1/detect?wait=true", content=photo, timeout=60).json()
    x1, y1, x2, y2 = (round(v) for v in result["faces"][0]["box"])
    changed = np.abs(after - before).max(axis=2) > 80  # far above JPEG's own error
    assert changed[y1:y2, x1:x2].sum() > (x2 - x1 + y2 - y1)  # the box edges at least
    margin = 40  # the score label sits just above the box
    near = np.zeros_like(changed)
    near[max(0, y1 - margin) : y2 + margin, max(0, x1 - margin) : x2 + margin] = True
    assert changed[~near].mean() < 0.001, "pixels changed far from the face"
    again = httpx.post(
        f"{gateway}/v1/draw", files={"image": ("a.png", photo, "image/png")}, timeout=60
    )
    assert again.status_code == 200 and again.headers["x-facestream-cached"] == "true"


def test_draw_refuses_what_is_not_an_image(gateway: str) -> None:
    bad = httpx.post(f"{gateway}/v1/draw", content=b"hello, not a photo", timeout=30)
    assert bad.status_code == 415 and bad.json()["error"]["code"] == "not_an_image"
    # Looks like a PNG at the door, cannot be decoded by the detector.
    broken = httpx.post(f"{gateway}/v1/draw", content=b"\x89PNG\r\n\x1a\n" + b"0" * 64, timeout=30)
    assert broken.status_code == 422 and broken.json()["error"]["code"] == "undecodable"


def test_status_tells_detectors_and_lag(gateway: str) -> None:
    status = httpx.get(f"{gateway}/v1/status", timeout=10).json()
    assert status["detectors"] == 1 and len(status["models"]) == 1
    assert status["lag"] >= 0 and status["pending"] >= 0


def _crop(face: dict[str, Any]) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(face["crop"])))
    assert img.format == "JPEG" and img.size == (CROP_SIZE, CROP_SIZE)
    return img


def test_crops_from_the_detector_and_from_a_cache_hit(
    gateway: str, photo_png: dict[str, bytes]
) -> None:
    photo = photo_png["grace_hopper"]
    plain = httpx.post(f"{gateway}/v1/detect?wait=true", content=photo, timeout=60).json()
    assert plain["faces"] and all("crop" not in f for f in plain["faces"])
    # The second time the gateway answers from the cache: it cuts the crops itself.
    hit = httpx.post(f"{gateway}/v1/detect?wait=true&crops=true", content=photo, timeout=60)
    assert hit.status_code == 200 and hit.json()["cached"] is True
    for face in hit.json()["faces"]:
        _crop(face)
    fresh = photo_png["camera"]  # never seen: the detector cuts them
    miss = httpx.post(
        f"{gateway}/v1/detect",
        params={"wait": "true", "crops": "true"},
        files={"image": ("c.png", fresh, "image/png")},
        timeout=60,
    ).json()
    assert miss["cached"] is False and miss["faces"]
    for face in miss["faces"]:
        _crop(face)
    off = httpx.post(f"{gateway}/v1/detect?wait=true&crops=false", content=fresh, timeout=60)
    assert all("crop" not in f for f in off.json()["faces"])


# --- the page in a real browser --------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


@pytest.fixture
def browser() -> Iterator[Any]:
    if not (CHROMIUM and DRIVER):
        pytest.skip("no Chromium here: apt-get install chromium chromium-driver (.ci/run does)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    # The driver named explicitly: Selenium Manager would otherwise try to download one.
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_the_page_draws_the_faces_of_an_uploaded_photo(
    gateway: str, browser: Any, photo_png: dict[str, bytes], tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    photo = tmp_path / "astronaut.png"
    photo.write_bytes(photo_png["astronaut"])
    browser.get(gateway + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: "detectors alive: 1" in d.find_element(By.ID, "status").text)
    browser.find_element(By.ID, "files").send_keys(str(photo))
    try:
        card = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, ".card[data-faces]"))
    except Exception:
        logs = browser.get_log("browser") if hasattr(browser, "get_log") else []
        raise AssertionError(f"{browser.find_element(By.ID, 'results').text}\n{logs}") from None
    assert card.get_attribute("data-faces") == "1"
    assert card.get_attribute("data-cached") in ("true", "false")
    assert "ms" in card.find_element(By.CLASS_NAME, "summary").text
    shown = json.loads(card.find_element(By.CSS_SELECTOR, "pre.json").text)
    assert len(shown["faces"]) == 1 and shown["width"] == 512
    x1, y1, x2, y2 = shown["faces"][0]["box"]
    # The box's left edge, halfway down, is the box colour on the canvas; its centre is not.
    probe = """
        const c = document.querySelector('.card canvas');
        const px = (x, y) => Array.from(c.getContext('2d').getImageData(x, y, 1, 1).data);
        return [c.width, c.height, px(arguments[0], arguments[1]), px(arguments[2], arguments[1])];
    """
    mid_y = round((y1 + y2) / 2)
    width, height, edge, inside = browser.execute_script(
        probe, round(x1), mid_y, round((x1 + x2) / 2)
    )
    assert (width, height) == (shown["width"], shown["height"])
    assert edge[1] > 200 and edge[0] < 80, edge  # #00ff66
    assert not (inside[1] > 200 and inside[0] < 80), inside
    # The second upload of the same photo comes from the cache.
    browser.find_element(By.ID, "files").send_keys(str(photo))
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".card[data-faces]")) == 2)
    newest = browser.find_elements(By.CSS_SELECTOR, ".card[data-faces]")[0]
    assert newest.get_attribute("data-cached") == "true"
