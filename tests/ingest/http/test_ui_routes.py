"""What people look at, through Redis and a real detector process: `/v1/draw`, `/v1/status`,
crops from the detector and from the gateway's cache answers, and the try-it page in a real
headless Chromium (Debian's chromium + chromium-driver, driven by Selenium)."""

from __future__ import annotations

import base64
import io
import json
import re
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
from tests.support.procs import Procs, base_env, detector_and_gateway

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gateway(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with detector_and_gateway(redis_url, tmp_path_factory.mktemp("looks"), "looks") as (url, _, _):
        yield url


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
GREEN = (0, 255, 102)  # the page's box and label colour (ingest/http/static/draw.js BOX)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not (CHROMIUM and DRIVER):
        pytest.skip("no Chromium here: apt-get install chromium chromium-driver (.ci/run does)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    # A fixed window: how large a photo is shown (and so its labels' size) depends on it.
    options.add_argument("--window-size=1280,1000")
    options.add_argument("--force-device-scale-factor=1")
    # The driver named explicitly: Selenium Manager would otherwise try to download one.
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    driver.set_script_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _open_page(browser: Any, gateway: str) -> Any:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(gateway + "/")
    wait = WebDriverWait(browser, 90)  # generous: two cores shared with everything else
    wait.until(lambda d: "detectors alive: 1" in d.find_element(By.ID, "status").text)
    return wait


def _upload(browser: Any, wait: Any, path: Path, cards: int = 1) -> Any:
    """Chooses `path` in the page and waits for the card that answers it (drawn or failed)."""
    from selenium.webdriver.common.by import By

    browser.find_element(By.ID, "files").send_keys(str(path))
    done = ".card[data-faces], .card[data-error]"
    try:
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, done)) == cards)
    except Exception:
        logs = browser.get_log("browser") if hasattr(browser, "get_log") else []
        raise AssertionError(f"{browser.find_element(By.ID, 'results').text}\n{logs}") from None
    return browser.find_elements(By.CSS_SELECTOR, done)[0]  # the newest card comes first


def _canvas_pixels(browser: Any) -> np.ndarray:
    """The newest card's canvas as drawn (its own pixels, not the scaled view)."""
    url = browser.execute_script("return document.querySelector('.card canvas').toDataURL();")
    return _pixels(base64.b64decode(url.split(",", 1)[1]))


def _shown(browser: Any) -> dict[str, Any]:
    return dict(
        browser.execute_script(
            """const c = document.querySelector('.card canvas');
            const r = c.getBoundingClientRect();
            return {width: c.width, height: c.height, shownWidth: r.width, shownHeight: r.height,
                    viewport: window.innerHeight, font: Number(c.dataset.font),
                    line: Number(c.dataset.line),
                    labels: JSON.parse(c.dataset.labels || '[]')};"""
        )
    )


def _near(pixel: np.ndarray, colour: tuple[int, ...], tolerance: int = 40) -> bool:
    """Drawn in `colour`, give or take antialiasing on a fractional coordinate."""
    return bool((np.abs(pixel - np.array(colour)) <= tolerance).all())


def _rgb(css: str) -> tuple[int, ...]:
    return tuple(int(v) for v in css[css.index("(") + 1 : css.index(")")].split(",")[:3])


def test_the_page_draws_the_faces_of_an_uploaded_photo(
    gateway: str, browser: Any, photo_png: dict[str, bytes], tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    photo = tmp_path / "astronaut.png"
    photo.write_bytes(photo_png["astronaut"])
    wait = _open_page(browser, gateway)
    card = _upload(browser, wait, photo)
    assert card.get_attribute("data-faces") == "1"
    assert card.get_attribute("data-cached") in ("true", "false")
    assert "ms" in card.find_element(By.CLASS_NAME, "summary").text
    # The answer, pretty-printed in a block that folds: indented, a box on one line, never a
    # lone number on a line (JSON.stringify(x, null, 2) put each coordinate on its own).
    block = card.find_element(By.CSS_SELECTOR, "details.json")
    assert block.get_attribute("open") is not None
    text = block.find_element(By.TAG_NAME, "pre").get_attribute("textContent")
    shown = json.loads(text)
    assert len(shown["faces"]) == 1 and shown["width"] == 512
    assert '\n  "faces": [\n    {\n      "box": [' in text
    assert re.search(r'^ {6}"box": \[[-\d., ]+\],?$', text, re.MULTILINE), text
    assert re.search(r'^ {6}"kps": \[\[[-\d., \[\]]+\]\],?$', text, re.MULTILINE), text
    assert not re.search(r"^\s*-?[\d.e+-]+,?$", text, re.MULTILINE), text
    block.find_element(By.TAG_NAME, "summary").click()
    assert block.get_attribute("open") is None
    assert not block.find_element(By.TAG_NAME, "pre").is_displayed()
    face = shown["faces"][0]
    x1, y1, x2, y2 = face["box"]
    view = _shown(browser)
    assert (view["width"], view["height"]) == (shown["width"], shown["height"])
    drawn = _canvas_pixels(browser)
    mid_y = round((y1 + y2) / 2)
    # The box's left edge, halfway down, is the box colour on the canvas; its centre is not.
    assert _near(drawn[mid_y, round(x1)], GREEN), drawn[mid_y, round(x1)]
    assert not _near(drawn[mid_y, round((x1 + x2) / 2)], GREEN)
    # The legend names the five landmarks, in the colours drawn at each one.
    entries = browser.find_elements(By.CSS_SELECTOR, "#legend li.landmark")
    names = [e.text.strip() for e in entries]
    assert names == ["left eye", "right eye", "nose", "left mouth corner", "right mouth corner"]
    for entry, (kx, ky) in zip(entries, face["kps"], strict=True):
        swatch = entry.find_element(By.CLASS_NAME, "swatch")
        colour = _rgb(swatch.value_of_css_property("background-color"))
        assert _near(drawn[round(ky), round(kx)], colour), (entry.text, colour)
    # The second upload of the same photo comes from the cache.
    newest = _upload(browser, wait, photo, cards=2)
    assert newest.get_attribute("data-cached") == "true"
    # Nothing the page does needs more than the gateway's Content-Security-Policy allows (no
    # inline script, handler or style attribute; the photo shown from a blob: URL).
    refused = [m for m in browser.get_log("browser") if "Content Security Policy" in m["message"]]
    assert not refused, refused


def _overlap(a: list[float], b: list[float]) -> float:
    """Area shared by two [x1, y1, x2, y2] rectangles."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


def test_the_page_labels_cover_no_other_face(
    gateway: str, browser: Any, photos: dict[str, np.ndarray], tmp_path: Path
) -> None:
    # Twenty faces tiled edge to edge: boxes touch or overlap, there is no room above most.
    photo = tmp_path / "crowd.png"
    Image.fromarray(photos["lfw_mosaic"]).save(photo)
    wait = _open_page(browser, gateway)
    card = _upload(browser, wait, photo)
    assert card.get_attribute("data-faces") == "20"
    view = _shown(browser)
    boxes = [f["box"] for f in _faces_of(card)]
    labels = [[r["x"], r["y"], r["x"] + r["w"], r["y"] + r["h"]] for r in view["labels"]]
    assert len(labels) == len(boxes) == 20
    # Readable: the label text is at least 12 CSS px as shown.
    assert view["font"] * view["shownWidth"] / view["width"] >= 12, view
    for i, label in enumerate(labels):
        assert min(label[0], label[1]) >= 0
        assert label[2] <= view["width"] and label[3] <= view["height"]
        for j, box in enumerate(boxes):
            assert j == i or _overlap(label, box) == 0, (i, label, j, box)
        for k, other in enumerate(labels[:i]):
            assert _overlap(label, other) == 0, (i, label, k, other)
    # The same on the drawn pixels: inside each box, off every box's outline and off the box's
    # own label, nothing is the label colour, and each label is drawn where the page says.
    drawn = _canvas_pixels(browser)
    green = (np.abs(drawn - np.array(GREEN)) <= 24).all(axis=2)  # the photo is grey: none
    line = view["line"] + 1  # the outline, and its antialiased edge
    outline = np.zeros_like(green)
    for x1, y1, x2, y2 in boxes:
        a, b, c, d = (round(v) for v in (x1, y1, x2, y2))
        for rows, cols in (
            (slice(b - line, b + line + 1), slice(a - line, c + line + 1)),
            (slice(d - line, d + line + 1), slice(a - line, c + line + 1)),
            (slice(b - line, d + line + 1), slice(a - line, a + line + 1)),
            (slice(b - line, d + line + 1), slice(c - line, c + line + 1)),
        ):
            outline[max(0, rows.start) : rows.stop, max(0, cols.start) : cols.stop] = True
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        inside = np.zeros_like(green)
        inside[round(y1) : round(y2), round(x1) : round(x2)] = True
        lx1, ly1, lx2, ly2 = labels[i]
        inside[max(0, int(ly1) - 1) : int(ly2) + 2, max(0, int(lx1) - 1) : int(lx2) + 2] = False
        stray = np.argwhere(green & inside & ~outline)
        assert len(stray) == 0, f"face {i} {boxes[i]}: label colour at (y, x) {stray[:5]}"
        lx1, ly1, lx2, ly2 = (round(v) for v in labels[i])
        assert green[ly1:ly2, lx1:lx2].mean() > 0.5, f"label {i} not drawn at {labels[i]}"


def _faces_of(card: Any) -> list[dict[str, Any]]:
    from selenium.webdriver.common.by import By

    pre = card.find_element(By.CSS_SELECTOR, "details.json pre")
    faces: list[dict[str, Any]] = json.loads(pre.get_attribute("textContent"))["faces"]
    return faces


def test_the_page_caps_a_tall_photo_to_the_viewport(
    gateway: str, browser: Any, photos: dict[str, np.ndarray], tmp_path: Path
) -> None:
    tall = np.concatenate([photos["astronaut"]] * 5)  # 512 x 2560
    photo = tmp_path / "tall.png"
    Image.fromarray(tall).save(photo)
    wait = _open_page(browser, gateway)
    card = _upload(browser, wait, photo)
    assert int(card.get_attribute("data-faces")) >= 1
    view = _shown(browser)
    assert (view["width"], view["height"]) == (512, 2560)
    assert view["shownHeight"] <= view["viewport"], view
    shown_ratio = view["shownWidth"] / view["shownHeight"]
    assert abs(shown_ratio - 512 / 2560) < 0.01, view  # its shape kept
    # Labels drawn for the size shown: as readable as on a photo shown full size.
    assert view["font"] * view["shownWidth"] / view["width"] >= 12, view


def test_the_page_says_what_went_wrong_in_the_servers_words(
    gateway: str, browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    body = b"hello, this is not a photo"
    notes = tmp_path / "notes.txt"
    notes.write_bytes(body)
    server = httpx.post(
        f"{gateway}/v1/detect?wait=true",
        content=body,
        headers={"content-type": "text/plain"},
        timeout=30,
    )
    assert server.status_code == 415
    message = server.json()["error"]["message"]
    wait = _open_page(browser, gateway)
    card = _upload(browser, wait, notes)
    assert card.get_attribute("data-error") == "not_an_image"
    problem = card.find_element(By.CLASS_NAME, "problem")
    assert "JPEG, PNG, WebP or BMP" in problem.find_element(By.CLASS_NAME, "advice").text
    assert message in problem.find_element(By.CLASS_NAME, "detail").text
    assert not card.find_elements(By.TAG_NAME, "canvas")
    # The other codes' sentences, from the page's own module (a gateway without a detector
    # answers no_detector; a huge photo too_many_pixels).
    explained = browser.execute_async_script(
        """const done = arguments[arguments.length - 1];
        import('/ui/present.js').then((m) => done([
            m.explain(503, {error: {code: 'no_detector', message: 'none alive'}}, '1'),
            m.explain(200, {error: {code: 'too_many_pixels', message: 'too big'}}, null),
        ])).catch((e) => done(String(e)));"""
    )
    no_detector, pixels = explained
    assert "`facestream detector` or `facestream up`" in no_detector["advice"]
    assert no_detector["detail"] == "no_detector: none alive (retry after 1 s)"
    assert "FACESTREAM_MAX_PIXELS" in pixels["advice"] and "too big" in pixels["detail"]


@pytest.fixture(scope="module")
def lonely_gateway(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A gateway with no detector behind it."""
    port = free_port()
    procs = Procs(
        tmp_path_factory.mktemp("lonely"), base_env(redis_url, f"lonely{uuid.uuid4().hex[:8]}")
    )
    procs.start("gateway", ["-m", "facestream.ingest"], FACESTREAM_HTTP_PORT=str(port))
    url = f"http://127.0.0.1:{port}"
    try:
        # Not /readyz: that waits for a detector's consumer group, which never comes.
        procs.wait_for(
            lambda: httpx.get(f"{url}/healthz", timeout=2).status_code == 200, "gateway up"
        )
        yield url
    finally:
        codes = procs.stop()
        assert codes == [0], procs.logs()


def test_the_page_says_no_detector_runs(
    lonely_gateway: str, browser: Any, photo_png: dict[str, bytes], tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    photo = tmp_path / "astronaut.png"
    photo.write_bytes(photo_png["astronaut"])
    browser.get(lonely_gateway + "/")
    wait = WebDriverWait(browser, 90)
    status = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#status.bad"))
    assert "detectors alive: 0" in status.text and "`facestream up`" in status.text
    card = _upload(browser, wait, photo)
    assert card.get_attribute("data-error") == "no_detector"
    problem = card.find_element(By.CLASS_NAME, "problem")
    advice = problem.find_element(By.CLASS_NAME, "advice").text
    assert advice.startswith("No detector is running: start one with `facestream detector`")
    detail = problem.find_element(By.CLASS_NAME, "detail").text
    assert detail.startswith("no_detector: no detector is running") and "retry after" in detail
