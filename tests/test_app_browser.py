"""The light-control page (app.py) driven in a real headless Chromium, as a person would use it: upload a cut-out,
move the sliders with the keyboard, read the shadow map the page shows, download the layer, and trigger each error.

Debian's chromium and chromedriver (apt-get install chromium chromium-driver; .ci/run does it), driven by selenium
through the chromedriver path, so that nothing is downloaded at run time. Run alone with `pytest -m browser`.
UPDATE_SCREENSHOT=1 also writes the page's screenshot to docs/images/app_screenshot.png (the one in the README).
"""

from __future__ import annotations

import io
import os
import re
import shutil
import socket
import time
import urllib.request
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
    pytest.skip(
        f"the browser tests need Debian's chromium ({CHROMIUM}) and chromedriver ({CHROMEDRIVER}): "
        "apt-get install chromium chromium-driver (.ci/run installs them)",
        allow_module_level=True,
    )

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

import app  # noqa: E402
from evaluate_shadow import shadow_softness  # noqa: E402

pytestmark = pytest.mark.browser
REPO = Path(__file__).resolve().parents[1]
CUBE = REPO / "examples" / "cube.png"
SCREENSHOT = REPO / "docs" / "images" / "app_screenshot.png"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1250",
)
WAIT_S = 90  # generous: CI machines are shared; a wait returns as soon as its condition holds


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RenderLog:
    """Counts the slider moves the server actually computes (wraps app.render_light, which the handlers call):
    `lights` holds light 1 of each move."""

    def __init__(self):
        self.lights = []
        self._render = app.render_light

    def __call__(self, pipe, prepared, lights, *args, **kwargs):
        self.lights.append(app.as_lights(lights)[0])
        return self._render(pipe, prepared, lights, *args, **kwargs)


@pytest.fixture(scope="module")
def servers():
    """Two pages on free ports of 127.0.0.1, in this process: the embedded default, and one whose model failed."""
    log = RenderLog()
    app.render_light = log
    demos, urls = [], {}
    for name, model in (
        ("ok", app.load_model(app.DEFAULT_MODEL, "cpu")),
        ("broken", app.load_model(REPO / "no-such-model", "cpu")),
    ):
        port = _free_port()
        demo = app.build_demo(model).queue(default_concurrency_limit=1)
        demo.launch(
            server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **app.launch_kwargs()
        )
        demos.append(demo)
        urls[name] = f"http://127.0.0.1:{port}/"
    yield urls, log
    for demo in demos:
        demo.close()
    app.render_light = log._render


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    downloads = tmp_path_factory.mktemp("downloads")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.downloads = downloads
    yield driver
    driver.quit()


def _wait(driver, condition, what: str):
    return WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(lambda d: condition(d), message=what)


def _open(driver, url: str) -> None:
    driver.get(url)
    _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#cutout input[type=file]"), "the page to load")


def _upload(driver, path: Path, element: str = "cutout") -> None:
    driver.find_element(By.CSS_SELECTOR, f"#{element} input[type=file]").send_keys(str(path))


def _status(driver) -> str:
    return driver.find_element(By.ID, "status").text


def _wait_status(driver, *parts: str) -> str:
    _wait(driver, lambda d: all(part in _status(d) for part in parts), f"the status to show {parts}")
    return _status(driver)


def _slider(driver, name: str):
    return driver.find_element(By.CSS_SELECTOR, f"input[type=range][aria-label^='range slider for {name}']")


def _shown_image(driver, element: str) -> np.ndarray:
    """The image an output component shows, fetched from the URL the page itself displays."""
    source = driver.find_element(By.CSS_SELECTOR, f"#{element} img").get_attribute("src")
    with urllib.request.urlopen(source, timeout=30) as response:
        return np.asarray(PIL.Image.open(io.BytesIO(response.read())))


def _toast(driver, text: str) -> str:
    def find(d):
        texts = d.execute_script(  # read in one go: toasts come and go while the test looks at them
            "return [...document.querySelectorAll('[data-testid=toast-text]')].map(e => e.textContent)"
        )
        return next((t for t in texts if text in t), None)

    message = _wait(driver, find, f"an error message containing {text!r}")
    driver.execute_script("document.querySelectorAll('[data-testid=toast-close]').forEach(b => b.click())")
    return message


def _displayed(driver, element: str) -> bool:
    """Whether an element is on the page and shown, read in one go: a hidden group may leave the page altogether."""
    return driver.execute_script(
        "const e = document.getElementById(arguments[0]); return !!e && e.getClientRects().length > 0", element
    )


def _column_centroid(weights: np.ndarray) -> float:
    return float((weights.sum(axis=0) * np.arange(weights.shape[1])).sum() / weights.sum())


@pytest.fixture(scope="module")
def cube_page(servers, browser):
    """The page with the cube example uploaded and its first shadow shown."""
    urls, _ = servers
    _open(browser, urls["ok"])
    _upload(browser, CUBE)
    _wait_status(browser, "phi 0°", "ms on cpu")
    return browser


def test_moving_phi_from_0_to_180_moves_the_shadow_to_the_other_side(servers, cube_page):
    _, log = servers
    mask = np.asarray(PIL.Image.open(CUBE).getchannel("A")) >= 128
    object_x = float(mask.nonzero()[1].mean())
    _slider(cube_page, "phi").send_keys(Keys.HOME)
    _wait_status(cube_page, "phi 0°")
    before = _shown_image(cube_page, "shadow").astype(np.float32)
    assert before.shape == mask.shape and before[mask].max() == 0  # at the input's size, no shadow on the object

    log.lights.clear()
    _slider(cube_page, "phi").send_keys(Keys.ARROW_RIGHT * 180)  # 180 moves, faster than the model
    _wait_status(cube_page, "phi 180°")
    after = _shown_image(cube_page, "shadow").astype(np.float32)
    assert _column_centroid(before) < object_x - 10  # light on the right: the shadow falls to the left ...
    assert _column_centroid(after) > object_x + 10  # ... and to the right once the light has turned half round
    time.sleep(1.0)  # nothing stale may arrive afterwards
    assert "phi 180°" in _status(cube_page)
    computed = [light.phi for light in log.lights]
    assert computed[-1] == 180.0 and len(computed) < 30, computed  # only the latest values, no queue of 180 frames


def test_a_bigger_light_softens_the_edge(cube_page):
    mask = np.asarray(PIL.Image.open(CUBE).getchannel("A")) >= 128
    _slider(cube_page, "phi").send_keys(Keys.HOME)
    _slider(cube_page, "size").send_keys(Keys.HOME)
    _wait_status(cube_page, "phi 0°", "size 2,")
    hard = _shown_image(cube_page, "shadow") / 255.0
    _slider(cube_page, "size").send_keys(Keys.END)
    _wait_status(cube_page, "phi 0°", "size 8,")
    soft = _shown_image(cube_page, "shadow") / 255.0
    assert shadow_softness(soft, mask) > shadow_softness(hard, mask) + 0.05


def test_the_downloaded_layer_is_black_with_the_shadow_as_alpha(cube_page):
    status = _wait_status(cube_page, "intensity 0.8")
    shadow = _shown_image(cube_page, "shadow").astype(np.float32)
    for old in cube_page.downloads.iterdir():
        old.unlink()
    cube_page.find_element(By.CSS_SELECTOR, "#layer a[data-testid=download-link]").click()
    files = _wait(
        cube_page,
        lambda d: [p for p in d.downloads.glob("*_layer.png")] if not list(d.downloads.glob("*.crdownload")) else [],
        "the layer PNG to download",
    )
    (layer_path,) = files
    theta, phi, size = re.match(r"theta ([\d.]+)°, phi ([\d.]+)°, size ([\d.]+),", status).groups()
    assert layer_path.name == f"cube_t{theta}_p{phi}_s{size}_layer.png"  # named by the object and the light shown
    with PIL.Image.open(layer_path) as layer:
        assert layer.mode == "RGBA" and layer.size == PIL.Image.open(CUBE).size
        pixels = np.asarray(layer).astype(np.float32)
    assert pixels[..., :3].max() == 0  # black
    assert np.abs(pixels[..., 3] - np.round(0.8 * shadow)).max() <= 1  # alpha = intensity x shadow map
    assert pixels[..., 3].max() > 50


def test_an_added_light_on_the_other_side_casts_a_second_shadow(cube_page):
    mask = np.asarray(PIL.Image.open(CUBE).getchannel("A")) >= 128
    object_x = int(round(mask.nonzero()[1].mean()))
    _slider(cube_page, "phi").send_keys(Keys.HOME)
    _wait_status(cube_page, "theta 30°, phi 0°")
    one = _shown_image(cube_page, "shadow").astype(np.float32)
    cube_page.find_element(By.ID, "add-light").click()
    _wait(cube_page, lambda d: _displayed(d, "light-2"), "light 2's sliders to show")
    _wait_status(cube_page, "light 2: theta 30°, phi 90°")
    _slider(cube_page, "light 2: phi").send_keys(Keys.ARROW_RIGHT * 90)  # 90 -> 180: the light on the left
    _wait_status(cube_page, "light 2: theta 30°, phi 180°", "2 lights in one batched")
    two = _shown_image(cube_page, "shadow").astype(np.float32)
    assert one[:, object_x + 10 :].sum() < 0.05 * one[:, : object_x - 10].sum()  # one light on the right
    left, right = two[:, : object_x - 10].sum(), two[:, object_x + 10 :].sum()
    assert right > 0.3 * left > 0 and two[mask].max() == 0  # a second shadow, on the other side
    cube_page.find_element(By.ID, "remove-light-2").click()  # back to one light, as the next tests expect
    _wait(cube_page, lambda d: not _displayed(d, "light-2"), "light 2 to go")
    _wait_status(cube_page, "theta 30°, phi 0°", "(UNet + decoder; the object")
    assert np.array_equal(_shown_image(cube_page, "shadow").astype(np.float32), one)


def test_each_input_error_is_a_message_and_the_page_keeps_working(cube_page, tmp_path):
    rgb = tmp_path / "photo.png"
    PIL.Image.open(CUBE).convert("RGB").save(rgb)
    empty = tmp_path / "empty.png"
    PIL.Image.new("RGBA", (64, 64), (255, 0, 0, 0)).save(empty)
    huge = tmp_path / "huge.png"
    PIL.Image.new("RGBA", (app.MAX_IMAGE_SIDE + 4, 16), (255, 0, 0, 255)).save(huge)
    for path, message in (
        (rgb, "This image has no transparency"),
        (empty, "The mask is empty"),
        (huge, f"this page takes images of at most {app.MAX_IMAGE_SIDE} px"),
    ):
        _upload(cube_page, path)
        shown = _toast(cube_page, message)
        assert "Traceback" not in shown and 'File "' not in shown
        assert not cube_page.find_elements(By.CSS_SELECTOR, "#shadow img")  # the old object's shadow is gone
    _upload(cube_page, CUBE)  # not frozen: a good upload works again
    _wait(cube_page, lambda d: d.find_elements(By.CSS_SELECTOR, "#shadow img"), "the shadow after a good upload")
    _wait_status(cube_page, "ms on cpu")


def test_a_model_that_failed_to_load_is_explained_on_the_page(servers, browser):
    urls, _ = servers
    _open(browser, urls["broken"])
    banner = browser.find_element(By.ID, "model-error").text
    assert "could not be loaded" in banner and "--model" in banner
    _upload(browser, CUBE)
    assert "no-such-model" in _toast(browser, "could not be loaded")


def test_an_example_lights_up_and_the_page_is_photographed(servers, browser, tmp_path):
    """Picks an example thumbnail, sets a light with the keyboard, and takes the README's screenshot."""
    urls, _ = servers
    _open(browser, urls["ok"])
    examples = browser.find_elements(
        By.CSS_SELECTOR, "button.gallery-item, .gallery button, [data-testid=examples] button"
    )
    sphere = next(e for e in examples if "sphere" in (e.get_attribute("innerHTML") or ""))
    sphere.click()
    _wait_status(browser, "phi 0°", "ms on cpu")
    _slider(browser, "phi").send_keys(Keys.ARROW_RIGHT * 140)
    _slider(browser, "size").send_keys(Keys.ARROW_RIGHT * 4)  # 2 -> 4
    _wait_status(browser, "phi 140°", "size 4,")
    time.sleep(0.5)  # let the last images paint
    browser.save_screenshot(str(tmp_path / "app.png"))
    with PIL.Image.open(tmp_path / "app.png") as shot:
        assert shot.width >= 1000
    if os.environ.get("UPDATE_SCREENSHOT") == "1":
        shutil.copy(tmp_path / "app.png", SCREENSHOT)
