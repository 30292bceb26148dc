"""The light-control page's functions (app.py), without a browser: reading uploads, the encode-once slider path, the
light dial, the error messages, the page's wiring and the Space folder. tests/test_app_browser.py drives the page."""

from __future__ import annotations

import importlib.util
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

gr = pytest.importorskip("gradio", reason="gradio is in requirements-app.txt (make setup installs it)")

import app  # noqa: E402
from pipeline_shadow import Light  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "examples").glob("*.png"))


@pytest.fixture(scope="module")
def shipped():
    model = app.load_model(app.DEFAULT_MODEL, "cpu")
    assert model.error is None, model.error
    return model


@pytest.fixture(scope="module")
def cube(shipped):
    """The cube example, encoded once (as the page does per upload)."""
    return app.prepare_object(shipped.pipe, _cube(), stem="cube")


def _rgba(size=(40, 32), box=(10, 8, 30, 24), alpha=255) -> PIL.Image.Image:
    """A cut-out: a red box with `alpha` on a transparent canvas."""
    array = np.zeros((size[1], size[0], 4), dtype=np.uint8)
    array[..., :3] = 255
    left, top, right, bottom = box
    array[top:bottom, left:right] = (200, 30, 30, alpha)
    return PIL.Image.fromarray(array, "RGBA")


def _cube() -> PIL.Image.Image:
    return PIL.Image.open(REPO / "examples" / "cube.png")


# ----- examples ------------------------------------------------------------------------------------------------------


def test_the_examples_are_small_rgba_cutouts_with_a_real_mask():
    assert len(EXAMPLES) >= 3
    for path in EXAMPLES:
        assert path.stat().st_size < 100 * 1024, path
        with PIL.Image.open(path) as image:
            assert image.mode == "RGBA"
            alpha = np.asarray(image.getchannel("A"))
        assert 0.01 < (alpha >= 128).mean() < 0.5, path  # an object on a transparent ground, not a full frame
    assert "render_shadow_dataset.py" in (REPO / "examples" / "README.md").read_text()


# ----- reading what the user uploaded ----------------------------------------------------------------------------------


def test_read_cutout_takes_the_mask_from_alpha_or_from_a_separate_mask():
    rgb, mask = app.read_cutout(_rgba())
    assert rgb.shape == (3, 32, 40) and mask.shape == (1, 32, 40)
    assert mask[0, 8:24, 10:30].min() == 1.0 and mask.sum() == 16 * 20
    separate = PIL.Image.fromarray((np.asarray(_rgba().getchannel("A"))), "L")
    rgb2, mask2 = app.read_cutout(_rgba().convert("RGB"), separate)
    assert torch.equal(mask2, mask) and torch.allclose(rgb2, rgb)


@pytest.mark.parametrize(
    ("image", "mask", "message"),
    [
        (_rgba().convert("RGB"), None, "has no transparency"),
        (_rgba(alpha=0), None, "The mask is empty"),
        (_rgba(alpha=100), None, "The mask is empty"),  # below 50 %: the model would see no object
        (_rgba(box=(0, 0, 40, 32)), None, "covers the whole image"),
        (_rgba().convert("RGB"), PIL.Image.new("L", (20, 20), 255), "must be the same size"),
    ],
)
def test_read_cutout_says_what_is_wrong(image, mask, message):
    with pytest.raises(app.PageError, match=message):
        app.read_cutout(image, mask)


def test_a_huge_image_is_refused_from_its_header(tmp_path):
    path = tmp_path / "wide.png"
    _rgba(size=(64, 8), box=(2, 2, 6, 6)).save(path)
    with pytest.raises(app.PageError, match=r"64 x 8 px; this page takes images of at most 32 px"):
        app.read_cutout(str(path), max_side=32)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(app.PageError, match=r"broken.png\) is not an image"):
        app.read_cutout(str(tmp_path / "broken.png"))


def test_a_truncated_upload_or_an_unusable_mask_is_named_not_an_internal_error(shipped, tmp_path):
    """A file cut short in the upload decodes only when its pixels are read: that, and a mask the pipeline refuses
    (transparency, CMYK), are messages about the upload, not 'something went wrong'."""
    whole = tmp_path / "whole.png"
    _rgba().save(whole)
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(app.PageError, match=r"The image \(cut.png\) is damaged or truncated and cannot be decoded"):
        app.read_cutout(str(truncated))
    with pytest.raises(app.PageError, match=r"The mask \(cut.png\) is damaged or truncated"):
        app.read_cutout(str(whole), str(truncated))
    with pytest.raises(app.PageError, match=r"The background \(cut.png\) is damaged or truncated"):
        app.read_background(str(truncated))
    cmyk = tmp_path / "mask.jpg"
    _rgba().convert("RGB").convert("CMYK").save(cmyk)
    with pytest.raises(app.PageError, match=r"The mask cannot be used: it has image mode CMYK, which is not a gray"):
        app.read_cutout(str(whole), str(cmyk))
    with pytest.raises(app.PageError, match=r"The mask cannot be used: it has transparency"):
        app.read_cutout(str(whole), str(whole))  # an RGBA cut-out given as its own mask
    demo = app.build_demo(shipped)
    (load,) = {fn.fn for fn in demo.fns.values() if fn.fn.__name__ == "load_object"}
    with pytest.raises(gr.Error, match="is damaged or truncated") as error:
        load(str(truncated), None, 0.0, None, None, 1.0, 30.0, 45.0, 4.0)
    assert "Something went wrong" not in str(error.value)


# ----- the encode-once slider path -------------------------------------------------------------------------------------


def test_a_slider_move_reuses_the_encoded_object_and_matches_the_full_pipeline(shipped, cube, monkeypatch):
    pipe, prepared = shipped.pipe, cube
    monkeypatch.setattr(pipe, "_encode", lambda *args, **kwargs: pytest.fail("a slider move re-encoded the object"))
    rendering = app.render_light(pipe, prepared, Light(30.0, 45.0, 4.0), intensity=0.5, seed=3)
    monkeypatch.undo()
    full = pipe(_cube(), theta=30.0, phi=45.0, size=4.0, generator=torch.Generator().manual_seed(3), output_type="pt")
    assert torch.allclose(rendering.shadow_map, full.shadow_maps[0], atol=1e-5)
    assert rendering.shadow.size == rendering.layer.size == rendering.composite.size == _cube().size
    assert rendering.seconds > 0


def test_the_outputs_are_the_map_its_black_layer_and_a_composite(shipped, cube):
    background = torch.zeros(3, 32, 32)
    background[1] = 1.0  # green, smaller than the canvas: cover-resized
    rendering = app.render_light(shipped.pipe, cube, app.DEFAULT_LIGHT, intensity=0.5, background=background)
    shadow = np.asarray(rendering.shadow, dtype=np.float32)
    layer = np.asarray(rendering.layer)
    assert rendering.layer.mode == "RGBA" and layer[..., :3].max() == 0
    assert np.abs(layer[..., 3] - np.round(0.5 * shadow)).max() <= 1  # alpha = intensity x shadow
    mask = np.asarray(_cube().getchannel("A")) >= 128
    assert shadow[mask].max() == 0 and shadow.max() > 100  # a real shadow, none on the object
    composite = np.asarray(rendering.composite, dtype=np.float32)
    darkest = np.unravel_index(np.where(mask, 0, shadow).argmax(), shadow.shape)
    assert composite[darkest][1] < 255 * (1 - 0.5 * shadow[darkest] / 255) + 2  # the green ground is darkened
    assert composite[0, 0, 1] > 250 and composite[0, 0, 0] < 5  # unshadowed ground: the background


def test_padding_grows_the_canvas_so_long_shadows_fit(shipped):
    prepared = app.prepare_object(shipped.pipe, _cube(), padding=0.25)
    assert prepared.rgb.shape[-2:] == (384, 384)  # 256 + 2 x 64
    rendering = app.render_light(shipped.pipe, prepared, Light(45.0, 0.0, 2.0))
    assert rendering.shadow.size == (384, 384)
    with pytest.raises(app.PageError, match=r"Padding \(a fraction of each side\) must be a number from 0 to 1, got 2"):
        app.prepare_object(shipped.pipe, _cube(), padding=2.0)


def test_phi_wraps_and_turning_it_moves_the_shadow_across_the_object(shipped, cube):
    maps = {
        phi: app.render_light(shipped.pipe, cube, Light(30.0, phi, 2.0)).shadow_map[0].numpy() for phi in (0, 180, 360)
    }
    assert np.array_equal(maps[0], maps[360])
    columns = np.arange(maps[0].shape[1])
    object_x = (np.asarray(_cube().getchannel("A")) >= 128).nonzero()[1].mean()
    centroid = {phi: (m.sum(0) * columns).sum() / m.sum() for phi, m in maps.items()}
    assert centroid[0] < object_x < centroid[180]  # light on the right: shadow on the left, and the other way round


def test_save_rendering_names_the_files_and_keeps_one_set(shipped, cube):
    rendering = app.render_light(shipped.pipe, cube, app.DEFAULT_LIGHT)
    for phi in (0.0, 90.0):
        paths = app.save_rendering(rendering, cube, Light(30.0, phi, 2.0))
    assert sorted(p.name for p in cube.output_dir.iterdir()) == sorted(
        f"cube_t30_p90_s2_{kind}.png" for kind in app.OUTPUT_KINDS
    )
    with PIL.Image.open(paths["layer"]) as layer:
        assert layer.mode == "RGBA" and layer.size == (256, 256)


# ----- several lights and environment maps -------------------------------------------------------------------------------


def _handler(demo, name: str):
    """The page's own event handler `name` (as the browser calls it), from the built page."""
    return next(function.fn for function in demo.fns.values() if function.name == name)


def _shown(path) -> np.ndarray:
    with PIL.Image.open(path) as image:
        return np.asarray(image)


def _mass_either_side(shadow_map: np.ndarray) -> tuple[float, float]:
    """The shadow's mass left and right of the cube's centre column."""
    object_x = int(round((np.asarray(_cube().getchannel("A")) >= 128).nonzero()[1].mean()))
    return float(shadow_map[:, : object_x - 10].sum()), float(shadow_map[:, object_x + 10 :].sum())


def test_two_lights_are_one_batched_call_equal_to_the_pipeline(shipped, cube):
    pipe, lights = shipped.pipe, [Light(30.0, 0.0, 2.0), Light(30.0, 180.0, 4.0, 0.5)]
    unet_calls = []
    hook = pipe.unet.register_forward_hook(lambda *args: unet_calls.append(1))
    try:
        rendering = app.render_light(pipe, cube, lights, intensity=0.5, seed=3)
    finally:
        hook.remove()
    assert len(unet_calls) == 1  # both lights in one batched UNet call, on the stored latents
    full = pipe(
        object_latents=cube.latents, lights=lights, generator=torch.Generator().manual_seed(3), output_type="pt"
    )
    assert torch.equal(rendering.shadow_map, full.shadow_maps[0])
    left, right = _mass_either_side(rendering.shadow_map[0].numpy())
    assert left > 0.2 * right > 0 and right > 0.2 * left  # a shadow on both sides of the object
    assert app.lighting_tag(lights) == "t30_p0_s2_w1+t30_p180_s4_w0.5"
    assert app.lighting_tag(lights, environment="sky") == "env_sky"


def test_removing_the_added_light_gives_back_the_single_light_page_bit_identically(shipped, cube):
    demo = app.build_demo(shipped)
    relight, add, remove = (_handler(demo, name) for name in ("relight", "add_light", "remove_light"))
    shown, *updates = add([False, False])
    assert shown == [True, False] and updates[0]["visible"] is True and updates[2]["value"] is True
    light_1, light_2, light_3 = (30, 0, 2), (30, 180, 4, 1.0), (20, 240, 6, 0.5)

    def page(light_2_on):  # prepared, environment, background, intensity, light 1, (on, light) per extra light
        composite, shadow, *_, status = relight(cube, None, None, 0.8, *light_1, light_2_on, *light_2, False, *light_3)
        return _shown(composite), _shown(shadow), status  # read now: the next move replaces the files

    alone, two = page(False), page(True)
    assert "theta 30°, phi 0°, size 2, intensity 0.8 ·" in alone[2]
    assert "light 2: theta 30°, phi 180°, size 4, power 1" in two[2] and "2 lights in one batched" in two[2]
    single = app.render_light(shipped.pipe, cube, Light(*light_1), 0.8)
    assert np.array_equal(alone[1], np.asarray(single.shadow))  # one light: exactly the old page
    assert not np.array_equal(two[1], alone[1])
    shown, group, on = remove(shown)  # light 2's
    assert shown == [False, False] and group["visible"] is False and on["value"] is False
    removed = page(on["value"])
    assert np.array_equal(removed[0], alone[0]) and np.array_equal(removed[1], alone[1])  # bit-identical again
    assert removed[2].split(" · ")[0] == alone[2].split(" · ")[0]
    with pytest.warns(UserWarning, match="at most 3 lights"):  # outside a page, gr.Warning is a Python warning
        add([True, True])


def test_api_calls_with_values_no_slider_can_send_are_named_messages(shipped, cube):
    """The page's API takes any JSON for a slider: None, text, NaN, values outside the slider. Each is a message
    naming the slider and its range, never 'something went wrong'."""
    demo = app.build_demo(shipped)
    relight, load = _handler(demo, "relight"), _handler(demo, "load_object")
    light_2, light_3 = (True, 30, 180, 4, 1.0), (False, 20, 240, 6, 0.5)
    for light_1, intensity, light_2_power, message in (
        ((None, 0, 2), 0.8, 1.0, r"Light 1's theta must be a number from 0 to 45, got None"),
        ((30, "left", 2), 0.8, 1.0, r"Light 1's phi must be a number from 0 to 360, got 'left'"),
        ((30, 0, 20), 0.8, 1.0, r"Light 1's size must be a number from 2 to 8, got 20"),
        ((30, 0, 2), float("nan"), 1.0, r"Intensity must be a number from 0 to 1, got nan"),
        ((30, 0, 2), 0.8, float("inf"), r"Light 2's power must be a number from 0 to 4, got inf"),
    ):
        with pytest.raises(gr.Error, match=message) as error:
            relight(cube, None, None, intensity, *light_1, *light_2[:4], light_2_power, *light_3)
        assert "Something went wrong" not in str(error.value)
    with pytest.raises(gr.Error, match=r"Padding \(a fraction of each side\) must be a number from 0 to 1, got None"):
        load(str(EXAMPLES[0]), None, None, None, None, 1.0, 30.0, 45.0, 4.0)
    # an extra light that is off is not read at all, whatever its sliders hold
    composite, *_ = relight(cube, None, None, 0.8, 30, 0, 2, False, None, None, None, None, *light_3)
    assert Path(composite).is_file()


def _sky(path, spots, height=64, width=128) -> Path:
    """An 8-bit equirectangular map (row 0 = zenith, centre column = phi 0, phi growing to the left), black but for
    bright discs at (theta, phi, radius in pixels)."""
    rows, columns = np.mgrid[0:height, 0:width]
    sky = np.zeros((height, width, 3), dtype=np.uint8)
    for theta, phi, radius in spots:
        row, column = theta / 180 * height - 0.5, ((180 - phi) % 360) / 360 * width - 0.5
        sky[(rows - row) ** 2 + (columns - column) ** 2 <= radius**2] = 255
    PIL.Image.fromarray(sky).save(path)
    return Path(path)


def test_an_environment_with_one_bright_spot_gives_one_light_that_drives_the_page(shipped, cube, tmp_path):
    environment = app.read_environment(_sky(tmp_path / "sky.png", [(30.0, 150.0, 2.5)]), max_lights=3)
    (light,) = environment.lighting.lights
    assert light.theta == pytest.approx(30.0, abs=2.0) and light.phi == pytest.approx(150.0, abs=3.0)
    assert environment.lighting.ambient < 0.01 and environment.warnings == [] and environment.name == "sky"
    listing = app.describe_environment(environment)
    assert (
        "**sky**: 1 light (in place of the sliders" in listing
        and f"| 1 | {light.theta:.1f}° | {light.phi:.1f}° | 2 | 1 |" in listing
    )
    demo = app.build_demo(shipped)
    composite, shadow, layer, dial, status = _handler(demo, "relight")(
        cube, environment, None, 0.8, 30, 0, 2, True, 30, 180, 4, 1.0, False, 20, 240, 6, 0.5
    )  # the sliders say otherwise: the environment's light replaces them
    assert (
        status.startswith(f"environment sky: light 1: theta {light.theta:.4g}°")
        and "(1 light in" in status
        and Path(shadow).name.startswith("cube_env_sky_")
    )
    expected = app.render_light(shipped.pipe, cube, environment.lighting.lights, ambient=environment.lighting.ambient)
    assert np.array_equal(_shown(shadow), np.asarray(expected.shadow))
    left, right = _mass_either_side(expected.shadow_map[0].numpy())
    assert right > 3 * left  # the light is on the left (phi 150): the shadow falls to the right


def test_environment_map_problems_are_messages_and_low_sky_a_warning(shipped, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(app.PageError, match=r"environment map \(broken.png\) is not an image"):
        app.read_environment(tmp_path / "broken.png")
    with pytest.raises(app.PageError, match=r"notes.txt is not a PNG/JPG/JPEG/HDR/EXR file"):
        app.read_environment(tmp_path / "notes.txt")
    with pytest.raises(app.PageError, match=r"black.png gives no usable light: .*black above the horizon"):
        app.read_environment(_sky(tmp_path / "black.png", []))
    with pytest.raises(app.PageError, match=r"must number 1..5"):
        app.read_environment(_sky(tmp_path / "sky.png", [(30.0, 0.0, 2.5)]), max_lights=0)
    low = _sky(tmp_path / "low.png", [(70.0, 90.0, 4.0), (20.0, 0.0, 1.5)])
    environment = app.read_environment(low)
    assert environment.lighting.ambient > 0.25
    assert any("goes into `ambient`" in note or "into ambient" in note for note in environment.warnings)
    handler = _handler(app.build_demo(shipped), "load_environment_map")
    with pytest.warns(UserWarning, match="ambient"):
        state, listing = handler(str(low), 3, "ambient")
    assert state.lighting.lights == environment.lighting.lights and "ambient 0." in listing
    with pytest.raises(gr.Error, match="is not an image this page can read"):
        handler(str(tmp_path / "broken.png"), 3, "ambient")


# ----- the light dial ---------------------------------------------------------------------------------------------------


def _sun_centre(dial: PIL.Image.Image, panel: int) -> tuple[float, float]:
    """Centre of the light's (orange) square in the left (0) or right (1) panel, in panel pixels, y down."""
    array = np.asarray(dial, dtype=np.int32)
    width = array.shape[1] // 2
    half = array[:, panel * width : (panel + 1) * width]
    sun = (half[..., 0] > 230) & (half[..., 1] > 150) & (half[..., 1] < 190) & (half[..., 2] < 60)
    ys, xs = sun.nonzero()
    return xs.mean(), ys.mean()


def test_the_dial_puts_the_light_where_the_angles_say():
    size = 180
    centre = (size / 2, size / 2 + 4)
    right = _sun_centre(app.light_dial(Light(30.0, 0.0, 2.0), size), 0)
    up = _sun_centre(app.light_dial(Light(30.0, 90.0, 2.0), size), 0)
    left = _sun_centre(app.light_dial(Light(30.0, 540.0, 2.0), size), 0)  # phi wraps: 540 = 180
    overhead = _sun_centre(app.light_dial(Light(0.0, 0.0, 2.0), size), 0)
    assert right[0] > centre[0] + 30 and abs(right[1] - centre[1]) < 3
    assert up[1] < centre[1] - 30 and abs(up[0] - centre[0]) < 3  # phi 90: behind the object, away from the camera
    assert left[0] < centre[0] - 30
    assert np.hypot(overhead[0] - centre[0], overhead[1] - centre[1]) < 3
    low, high = (_sun_centre(app.light_dial(Light(t, 0.0, 2.0), size), 1) for t in (10.0, 45.0))
    assert high[0] > low[0] and high[1] > low[1]  # from the side: larger theta = the light further from overhead
    mirrored = _sun_centre(app.light_dial(Light(45.0, 180.0, 2.0), size), 1)
    assert mirrored[0] < size / 2 - 30 and abs(mirrored[1] - high[1]) < 1  # a light on the left is drawn on the left
    small, big = (np.asarray(app.light_dial(Light(30.0, 0.0, s), size)) for s in (2.0, 8.0))
    orange = [((a[..., 0] > 230) & (a[..., 2] < 60)).sum() for a in (small, big)]
    assert orange[1] > orange[0]  # a bigger light is drawn bigger
    assert app.light_dial(app.DEFAULT_LIGHT, size).size == (2 * size, size)
    both = np.asarray(app.light_dial([Light(30.0, 0.0, 2.0), Light(30.0, 180.0, 2.0)], size), dtype=np.int32)
    orange = (both[..., 0] > 230) & (both[..., 1] > 150) & (both[..., 1] < 190) & (both[..., 2] < 60)
    columns = orange[:, :size].nonzero()[1]
    assert (columns > centre[0] + 30).any() and (columns < centre[0] - 30).any()  # every light is drawn
    sides = orange[:, size:].nonzero()[1]
    assert (sides > size / 2 + 30).any() and (sides < size / 2 - 30).any()


# ----- the model and the messages -----------------------------------------------------------------------------------------


def test_a_model_that_fails_to_load_becomes_a_message_not_a_crash(tmp_path):
    model = app.load_model(tmp_path / "no-such-model", "cpu")
    assert model.pipe is None and "could not be loaded" in model.error and "no-such-model" in model.error
    assert "--model" in model.error
    demo = app.build_demo(model)  # the page still builds, and says why
    assert any("The model is not available" in str(b.value) for b in demo.blocks.values() if isinstance(b, gr.Markdown))


def test_handlers_turn_errors_into_one_line_messages():
    @app._human_errors("testing")
    def refuse():
        raise app.PageError("The mask is empty <b>.")

    @app._human_errors("testing")
    def crash():
        raise KeyError("boom")

    with pytest.raises(gr.Error, match="The mask is empty &lt;b&gt;."):
        refuse()
    with pytest.raises(gr.Error, match="Something went wrong while testing: KeyError: 'boom'. The details"):
        crash()


def test_the_sliders_only_relight_and_only_the_latest_value_is_computed(shipped):
    demo = app.build_demo(shipped)
    sliders = {b.label.split(" ")[0].rstrip(":"): i for i, b in demo.blocks.items() if isinstance(b, gr.Slider)}
    (theta, phi, size) = (demo.blocks[sliders[name]] for name in ("theta", "phi", "size"))
    assert (theta.minimum, theta.maximum, phi.minimum, phi.maximum, size.minimum, size.maximum) == (0, 45, 0, 360, 2, 8)
    moves = {(sliders[name], "input") for name in ("theta", "phi", "size", "intensity")}  # every move, while dragging
    (relight,) = [d for d in demo.config["dependencies"] if (sliders["phi"], "input") in map(tuple, d["targets"])]
    assert moves <= set(map(tuple, relight["targets"]))
    assert relight["trigger_mode"] == "always_last" and relight["show_progress"] == "hidden"
    (cutout,) = [i for i, b in demo.blocks.items() if isinstance(b, gr.Image) and b.elem_id == "cutout"]
    assert cutout not in relight["inputs"]  # the slider path never sees (or re-encodes) the upload


def test_parse_args_speaks_the_project_vocabulary(capsys):
    assert app.parse_args(["--pretrained_model_name_or_path", "x"]).model == "x"
    assert app.parse_args([]).model == str(app.DEFAULT_MODEL) and app.parse_args([]).host == "127.0.0.1"
    for wrong, named in (
        (["--max_side", "0"], "--max_side"),
        (["--threads", "0"], "--threads"),
        (["--device", "banana"], "--device"),
        (["--port", "70000"], "--port (or $GRADIO_SERVER_PORT) must be an integer in 1-65535, got '70000'"),
        (["--port", "http"], "--port (or $GRADIO_SERVER_PORT) must be an integer in 1-65535, got 'http'"),
    ):
        with pytest.raises(SystemExit):
            app.parse_args(wrong)
        assert named in capsys.readouterr().err
    assert 1 <= app.default_threads() == max(1, os.cpu_count() - 1)


def test_a_port_the_page_cannot_have_is_a_message_not_a_traceback(monkeypatch, capsys, caplog):
    monkeypatch.setenv("GRADIO_SERVER_PORT", "0")  # the port's default comes from the environment: checked the same
    with pytest.raises(SystemExit):
        app.parse_args([])
    assert "must be an integer in 1-65535, got '0'" in capsys.readouterr().err
    monkeypatch.delenv("GRADIO_SERVER_PORT")
    bad_env = subprocess.run(  # gradio itself reads it when imported: refused before that
        [sys.executable, str(REPO / "app.py")], env={**os.environ, "GRADIO_SERVER_PORT": "eighty"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad_env.returncode == 1 and "Traceback" not in bad_env.stderr
    assert "$GRADIO_SERVER_PORT must be a port number, got 'eighty'" in bad_env.stderr
    with socket.socket() as taken:  # a port someone else already serves on
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = ["--port", str(port), "--threads", str(torch.get_num_threads())]
        assert app.main(argv) == 1
    assert f"Cannot serve the page on --host 127.0.0.1 --port {port}: Cannot find empty port" in caplog.text


# ----- benchmark and Space -----------------------------------------------------------------------------------------------


def test_the_app_benchmark_runs_and_times_both_paths(capsys):
    spec = importlib.util.spec_from_file_location("bench_app", REPO / "benchmarks" / "bench_app.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--moves", "2", "--objects", "1", "--threads", "1"])
    assert result["moves"] == 2 and result["objects"] == 1 and result["resolution"] == 128
    assert [(row["threads"], row["path"]) for row in result["rows"]] == [(1, "live"), (1, "full")]
    assert all(row["median_ms"] > 0 and row["cpu_median_ms"] > 0 for row in result["rows"])
    assert "| baseline: re-encode the object on every move, then the same | 1 |" in capsys.readouterr().out


def test_the_space_card_and_folder_run_the_page_on_their_own(tmp_path):
    card = (REPO / "space" / "README.md").read_text()
    front = re.match(r"---\n(.*?)\n---\n", card, re.S).group(1)
    fields = dict(line.split(": ", 1) for line in front.splitlines() if ": " in line)
    assert fields["sdk"] == "gradio" and fields["app_file"] == "app.py"
    assert fields["sdk_version"].split(".")[0] == gr.__version__.split(".")[0]
    space = tmp_path / "space"
    subprocess.run(["make", "-s", "space", f"SPACE_DIR={space}"], cwd=REPO, check=True, timeout=60)
    assert (space / "README.md").read_text() == card
    assert (space / "models" / "shadow-small" / "model_index.json").is_file() and (space / "examples").is_dir()
    check = "import app; m = app.load_model(); assert m.error is None, m.error; app.build_demo(m); print('ok')"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, "-c", check], cwd=space, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]
