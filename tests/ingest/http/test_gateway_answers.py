"""What the gateway tells people, through real processes on a real redis-server: no detector
said at once (503 `no_detector`), one error shape for every layer, messages without Python
reprs, Redis out of memory named as such, offline API docs and the pages' security headers."""

from __future__ import annotations

import re
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgpack
import pytest
import redis

from facestream.common.contract.keys import Keys
from facestream.control.embedded import EmbeddedRedis, free_port
from tests.support.procs import Procs, base_env

GARBAGE_JPEG = b"\xff\xd8\xff" + b"\0" * 200  # a JPEG by its first bytes, and nothing more
REPR = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")


class Stack:
    """A gateway on its own prefix, started with no detector; `detector()` adds one."""

    def __init__(self, procs: Procs, url: str, prefix: str) -> None:
        self.procs, self.url, self.prefix = procs, url, prefix
        self.has_detector = False

    def detector(self) -> None:
        if self.has_detector:
            return
        self.procs.start("detector", ["-m", "facestream.detector"], FACESTREAM_CONSUMER="ans-det")
        self.has_detector = True


@pytest.fixture(scope="module")
def stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prefix = f"ans{uuid.uuid4().hex[:8]}"
    port = free_port()
    procs = Procs(tmp_path_factory.mktemp("answers"), base_env(redis_url, prefix))
    procs.start("gateway", ["-m", "facestream.ingest"], FACESTREAM_HTTP_PORT=str(port))
    url = f"http://127.0.0.1:{port}"
    try:
        procs.wait_for(lambda: httpx.get(f"{url}/healthz").status_code == 200, "gateway up")
        yield Stack(procs, url, prefix)
    finally:
        codes = procs.stop()
        assert set(codes) == {0}, procs.logs()


@pytest.fixture(scope="module")
def live(stack: Stack) -> Stack:
    """The same gateway once a detector serves behind it."""
    stack.detector()
    stack.procs.wait_for(
        lambda: httpx.get(f"{stack.url}/v1/status", timeout=2).json()["detectors"] == 1,
        "the detector advertised",
    )
    return stack


# --- no detector, said at once ---------------------------------------------------------------


def test_no_detector_is_503_at_once_then_200_once_one_runs(
    stack: Stack, photo_png: dict[str, bytes], r: redis.Redis
) -> None:
    assert not stack.has_detector, "this test must run before any other starts the detector"
    url, photo = stack.url, photo_png["astronaut"]
    waits = [
        ("/v1/detect?wait=true", {"content": photo}),
        ("/v1/detect?wait=true", {"files": {"image": ("a.png", photo, "image/png")}}),
        ("/v1/draw", {"content": photo}),
    ]
    for path, kwargs in waits:
        started = time.monotonic()
        resp = httpx.post(url + path, timeout=30, **kwargs)
        took = time.monotonic() - started
        assert resp.status_code == 503, (path, resp.text)
        assert took < 1.0, (path, took)  # not the 30 s wait timeout
        assert resp.headers["retry-after"] == "1"
        problem = resp.json()["error"]
        assert problem["code"] == "no_detector", path
        assert "facestream detector" in problem["message"] and "facestream up" in problem["message"]
    # The drop-in route keeps its own error shape.
    old = httpx.post(url + "/face-detection", files={"image": ("a.png", photo)}, timeout=30)
    assert old.status_code == 503 and old.headers["retry-after"] == "1"
    assert set(old.json()) == {"error"} and "no detector" in old.json()["error"]
    # Not waiting: accepted and queued, and the answer says nobody reads it yet.
    queued = httpx.post(url + "/v1/detect", params={"id": "queued-1"}, content=photo, timeout=30)
    assert queued.status_code == 202, queued.text
    assert queued.json()["detectors"] == 0 and "no detector" in queued.json()["warning"]
    multipart = httpx.post(url + "/v1/detect", files={"image": ("a.png", photo)}, timeout=30)
    assert multipart.status_code == 202 and multipart.json()["detectors"] == 0

    stack.detector()
    stack.procs.wait_for(
        lambda: httpx.get(f"{url}/v1/status", timeout=2).json()["detectors"] == 1,
        "the detector advertised",
    )
    seen = time.monotonic()
    while True:  # the gateway sees it within a second of its advertisement
        resp = httpx.post(url + "/v1/detect?wait=true", content=photo, timeout=30)
        if resp.status_code == 200 or time.monotonic() - seen > 1.0:
            break
        assert resp.json()["error"]["code"] == "no_detector"
    assert resp.status_code == 200, resp.text
    assert len(resp.json()["faces"]) == 1
    again = httpx.post(url + "/v1/detect", content=photo_png["camera"], timeout=30)
    assert again.status_code == 202 and again.json()["detectors"] == 1
    assert "warning" not in again.json()

    results = Keys(stack.prefix).results

    def answered() -> bool:
        return any(msgpack.unpackb(f[b"result"])["id"] == "queued-1" for _, f in r.xrange(results))

    stack.procs.wait_for(answered, "the image queued before any detector ran, answered", 30)


# --- one error shape, worded for people ------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/no/such/path", 404, "not_found"),
        ("POST", "/v2/detect", 404, "not_found"),
        ("GET", "/v1/detect", 405, "method_not_allowed"),
        ("DELETE", "/v1/draw", 405, "method_not_allowed"),
        ("PUT", "/face-detection", 405, "method_not_allowed"),
        ("POST", "/v1/draw?timeout_ms=soon", 400, "bad_request"),
        ("POST", "/v1/detect?wait=true&timeout_ms=soon", 400, "bad_request"),  # the fast path
        ("GET", "/docs/assets/index.html", 404, "not_found"),
        ("GET", "/ui/secret.txt", 404, "not_found"),
    ],
)
def test_every_error_has_the_documented_shape(
    stack: Stack, method: str, path: str, status: int, code: str
) -> None:
    resp = httpx.request(method, stack.url + path, content=b"\xff\xd8\xff", timeout=30)
    assert resp.status_code == status, resp.text
    assert set(resp.json()) == {"error"}, resp.text
    assert resp.json()["error"]["code"] == code and resp.json()["error"]["message"]
    if status == 405:
        assert resp.headers["allow"]


def test_undecodable_image_is_worded_without_a_python_repr(live: Stack) -> None:
    url = live.url
    detect = httpx.post(f"{url}/v1/detect?wait=true", content=GARBAGE_JPEG, timeout=30)
    assert detect.status_code == 200, detect.text
    assert detect.json()["error"]["code"] == "undecodable"
    draw = httpx.post(f"{url}/v1/draw", content=GARBAGE_JPEG, timeout=30)
    assert draw.status_code == 422 and draw.json()["error"]["code"] == "undecodable"
    multipart = httpx.post(
        f"{url}/v1/detect?wait=true", files={"image": ("x.jpg", GARBAGE_JPEG)}, timeout=30
    )
    old = httpx.post(f"{url}/face-detection", files={"image": ("x.jpg", GARBAGE_JPEG)}, timeout=30)
    assert old.status_code == 400
    for message in (
        detect.json()["error"]["message"],
        draw.json()["error"]["message"],
        multipart.json()["error"]["message"],
        old.json()["error"],
    ):
        assert message and not REPR.search(message) and "BytesIO" not in message, message


# --- offline API docs and security headers ---------------------------------------------------


def _references(html: str) -> list[str]:
    return re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html)


def test_api_docs_load_from_the_gateway_alone(stack: Stack) -> None:
    assert httpx.get(stack.url + "/redoc").status_code == 404  # ReDoc would fetch from a CDN
    resp = httpx.get(stack.url + "/docs", timeout=10)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
    html = resp.text
    assert "http://" not in html and "https://" not in html and "cdn" not in html.lower()
    refs = _references(html)
    assert any(ref.endswith(".js") for ref in refs), refs
    for ref in refs:
        assert ref.startswith("/"), ref  # this gateway, no other host
        asset = httpx.get(stack.url + ref, timeout=10)
        assert asset.status_code == 200, ref
        assert len(asset.content) > 1000, ref
    # The OpenAPI document the viewers read is the gateway's own too.
    assert "'/openapi.json'" in html or '"/openapi.json"' in html


@pytest.mark.parametrize(
    "path", ["/", "/ui/app.js", "/ui/style.css", "/docs", "/docs/assets/swagger-ui.css"]
)
def test_pages_send_security_headers(stack: Stack, path: str) -> None:
    resp = httpx.get(stack.url + path, timeout=10)
    assert resp.status_code == 200
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert resp.headers["x-frame-options"] == "DENY"
    csp = {
        part.split()[0]: part.split()[1:]
        for part in resp.headers["content-security-policy"].split(";")
        if part.strip()
    }
    assert csp["frame-ancestors"] == ["'none'"]
    assert csp["default-src"] == ["'self'"]
    scripts = csp["script-src"]
    assert "'unsafe-inline'" not in scripts and "'unsafe-eval'" not in scripts
    assert all(s == "'self'" or s.startswith("'sha256-") for s in scripts), scripts
    if path == "/" or path.startswith("/ui/"):
        assert "blob:" in csp["img-src"] and scripts == ["'self'"]


def test_api_answers_say_nosniff_too(stack: Stack, photo_png: dict[str, bytes]) -> None:
    fast = httpx.post(stack.url + "/v1/detect", content=b"not an image", timeout=10)
    routed = httpx.get(stack.url + "/v1/status", timeout=10)
    for resp in (fast, routed):
        assert resp.headers["x-content-type-options"] == "nosniff"


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


def test_swagger_ui_renders_under_its_policy(stack: Stack) -> None:
    """In a real browser: the docs render from the gateway alone, with no policy violation."""
    if not (CHROMIUM and DRIVER):
        pytest.skip("no Chromium here: apt-get install chromium chromium-driver (.ci/run does)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    try:
        driver.get(stack.url + "/docs")
        WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock"))
        assert "/v1/detect" in driver.find_element(By.TAG_NAME, "body").text
        logs = [e["message"] for e in driver.get_log("browser")]
        assert not [m for m in logs if "Content Security Policy" in m], logs
    finally:
        driver.quit()


# --- Redis out of memory ---------------------------------------------------------------------


def test_redis_out_of_memory_is_named_and_not_ready(
    tmp_path: Path, photo_png: dict[str, bytes]
) -> None:
    """Its own redis-server: maxmemory is lowered under the gateway, then raised again."""
    (tmp_path / "redis").mkdir()
    with EmbeddedRedis(tmp_path / "redis") as server:
        admin = redis.Redis.from_url(server.url)
        port = free_port()
        procs = Procs(tmp_path, base_env(server.url, "oom", FACESTREAM_HTTP_PORT=port))
        procs.start("gateway", ["-m", "facestream.ingest"])
        url = f"http://127.0.0.1:{port}"
        try:
            procs.wait_for(lambda: httpx.get(f"{url}/healthz").status_code == 200, "gateway up")
            admin.config_set("maxmemory-policy", "noeviction")
            admin.config_set("maxmemory", 1)  # every write refused from now on
            refused = httpx.post(f"{url}/v1/detect", content=photo_png["camera"], timeout=30)
            multipart = httpx.post(
                f"{url}/v1/detect", files={"image": ("c.png", photo_png["camera"])}, timeout=30
            )
            ready = httpx.get(f"{url}/readyz", timeout=30)
            admin.config_set("maxmemory", 0)
            procs.wait_for(
                lambda: "memory" not in httpx.get(f"{url}/readyz").json()["reason"],
                "readyz stops reporting out of memory",
                30,
            )
            accepted = httpx.post(f"{url}/v1/detect", content=photo_png["camera"], timeout=30)
        finally:
            admin.close()
            assert procs.stop() == [0], procs.logs()
    for resp in (refused, multipart):
        assert resp.status_code == 503, resp.text
        assert resp.json()["error"]["code"] == "redis_oom"
        assert "out of memory" in resp.json()["error"]["message"]
        assert "unreachable" not in resp.json()["error"]["message"]
        assert resp.headers["retry-after"] == "1"
    assert ready.status_code == 503 and "out of memory" in ready.json()["reason"], ready.text
    assert accepted.status_code == 202, accepted.text
