# Copyright 2026 The controllable-shadow-generation authors. Licensed under the Apache License, Version 2.0.
"""A light-control page: move the light, watch the shadow follow (Gradio).

    python app.py                                    # the embedded default, models/shadow-small (CPU is enough)
    python app.py --model PATH_OR_HUB_ID [--port 7860] [--device cuda]

Upload an RGBA cut-out (the mask is its alpha channel) or an image plus a mask, then move the sliders: theta (polar
angle, 0..45), phi (azimuth, 0..360, periodic), size (area-light side, 2..8: bigger = softer) and intensity. The
object is encoded ONCE per upload (`ShadowPipeline.encode_object`); every slider move runs only the UNet and the
VAE decoder on the stored `ObjectLatents`, and only the latest slider value is computed when the slider moves faster
than the model (`trigger_mode="always_last"`). Outputs: the composite, the raw shadow map and a black shadow layer
with alpha, each downloadable as a PNG at the input's size (grown by the padding, when some is asked for), and a
picture of where the light stands.

"Add light" shows up to two more lights (each with its power relative to light 1's); an equirectangular environment
map replaces the sliders' lights by its own (`lights_from_environment`). Several lights are predicted in ONE batched
UNet call on the same stored latents and composed by irradiance (README "Several lights and environment maps").

The same file runs as a Hugging Face Space: see space/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import html
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# Before gradio is imported: it reads these once. No telemetry or version check from the page server.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
if not os.environ.get("GRADIO_SERVER_PORT", "7860").strip().isdigit():  # gradio's import would die on int() of it
    sys.exit(f"app.py: error: $GRADIO_SERVER_PORT must be a port number, got {os.environ['GRADIO_SERVER_PORT']!r}.")

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import PIL.Image  # noqa: E402
import PIL.ImageDraw  # noqa: E402
import PIL.ImageFont  # noqa: E402
import PIL.ImageOps  # noqa: E402
import torch  # noqa: E402

import pipeline_shadow  # noqa: E402
from generate_shadows import pad_canvas  # noqa: E402
from pipeline_shadow import (  # noqa: E402
    LOW_SKY_CHOICES,
    EnvironmentLighting,
    Light,
    ObjectLatents,
    ShadowPipeline,
    check_device,
    composite,
    gray_to_tensor,
    image_to_tensor,
    lights_from_environment,
    shadow_layer,
    shadow_map_to_pil,
    wrap_phi,
)

logger = logging.getLogger("app")
REPO = Path(__file__).resolve().parent
DEFAULT_MODEL = REPO / "models" / "shadow-small"
EXAMPLES_DIR = REPO / "examples"

# The page's light ranges: the paper's training grid (docs/design.md §2, §4). phi covers a full turn; 360 = 0.
THETA_RANGE = (0.0, 45.0)
PHI_RANGE = (0.0, 360.0)
SIZE_RANGE = (2.0, 8.0)
INTENSITY_RANGE = (0.0, 1.0)
DEFAULT_LIGHT = Light(theta=30.0, phi=0.0, size=2.0)
# Several lights (README "Several lights and environment maps"): light 1 is always on with power 1; the extra lights'
# powers are relative to it (only ratios matter). A fixed number of slots keeps the page's wiring static.
MAX_LIGHTS = 3
POWER_RANGE = (0.0, 4.0)
EXTRA_LIGHTS = (Light(theta=30.0, phi=90.0, size=4.0, power=1.0), Light(theta=20.0, phi=240.0, size=6.0, power=0.5))
ENVIRONMENT_MAX_LIGHTS = 5  # each environment light is one more row of the batched UNet call
ENVIRONMENT_SUFFIXES = (".png", ".jpg", ".jpeg", ".hdr", ".exr")
DEFAULT_INTENSITY = 0.8
PADDING_MAX = 1.0  # fraction of each side added around the object
# Far above any processing resolution: a bigger upload costs seconds of resizing per slider move and memory for
# nothing (the model sees the image at its training resolution), so the page asks for a smaller one instead.
MAX_IMAGE_SIDE = 4096
OUTPUT_KINDS = ("composite", "shadow", "layer")
ENVIRONMENT_HINT = "No environment map: the sliders' lights are used."


class PageError(ValueError):
    """A problem with what the user gave the page, worded for a person; shown on the page as is."""


# ---------------------------------------------------------------------------------------------------------------------
# 1. The model: loaded once at start-up; a failure becomes a message on the page, not a dead server.
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    name: str
    pipe: ShadowPipeline | None
    error: str | None = None  # why `pipe` is None, for the page

    @property
    def device(self) -> str:
        return str(self.pipe.device) if self.pipe is not None else "none"


def display_name(model: str | os.PathLike) -> str:
    """A model folder inside the repository by its relative path (what a user typed), anything else as given."""
    try:
        return str(Path(model).resolve().relative_to(REPO))
    except ValueError:
        return str(model)


def load_model(model: str | os.PathLike = DEFAULT_MODEL, device: str | None = None) -> LoadedModel:
    """Loads a trained shadow pipeline (folder or Hub id) on `device` (default: cuda when available, bf16 there).
    Never raises: a model that fails to load comes back with `error` set, so the page can say so."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        pipe = ShadowPipeline.from_pretrained(model, torch_dtype=dtype).to(device)
    except Exception as error:  # any failure (missing folder, bad config, offline Hub, wrong files) -> a message
        logger.exception("Could not load the model %s", model)
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return LoadedModel(
            name=display_name(model),
            pipe=None,
            error=(
                f"The model `{model}` could not be loaded ({reason}). Start the page with `python app.py --model "
                "PATH_OR_HUB_ID` pointing to a trained shadow pipeline folder (with model_index.json, unet/, vae/, "
                "scheduler/) or a Hub id."
            ),
        )
    pipe.set_progress_bar_config(disable=True)
    return LoadedModel(name=display_name(model), pipe=pipe)


# ---------------------------------------------------------------------------------------------------------------------
# 2. Reading what the user uploaded. Each check says what was wrong and what to do.
# ---------------------------------------------------------------------------------------------------------------------


def open_image(path: str | os.PathLike, what: str, max_side: int = MAX_IMAGE_SIDE) -> PIL.Image.Image:
    """Opens an uploaded file (EXIF orientation applied) after checking its size from the header alone, so a huge
    image is refused before its pixels are decoded."""
    try:
        image = PIL.Image.open(path)
    except PIL.Image.DecompressionBombError as error:
        raise PageError(
            f"The {what} is far too large to open ({error}). Upload one of at most {max_side} px."
        ) from error
    except (OSError, PIL.UnidentifiedImageError) as error:
        raise PageError(f"The {what} ({Path(path).name}) is not an image this page can read: {error}.") from error
    width, height = image.size
    if max(width, height) > max_side:
        raise PageError(
            f"The {what} is {width} x {height} px; this page takes images of at most {max_side} px on the long side. "
            f"Downscale it first (the model works at its training resolution anyway)."
        )
    try:
        image.load()  # the pixels: a truncated or corrupt file fails here, named, not later as an internal error
        return PIL.ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError) as error:  # PIL's decoders raise all three on damaged data
        raise PageError(
            f"The {what} ({Path(path).name}) is damaged or truncated and cannot be decoded ({error}). Save or export "
            "it again and upload the new file."
        ) from error


def _pixels(convert, image, what: str) -> torch.Tensor:
    """`image_to_tensor` / `gray_to_tensor` with their refusals (a mask with transparency, a CMYK mask, ...) as the
    page's messages: they describe the upload, not a fault of the page."""
    try:
        return convert(image, what)
    except ValueError as error:
        reason = str(error).replace(f"`{what}` ", "", 1).rstrip(".")
        raise PageError(f"The {what} cannot be used: it {reason}.") from error


def read_cutout(image, mask=None, max_side: int = MAX_IMAGE_SIDE) -> tuple[torch.Tensor, torch.Tensor]:
    """The object to light: an RGBA cut-out (mask = alpha) or an image plus a mask (PIL images or file paths) ->
    ([3,H,W] RGB in [0, 1], [1,H,W] mask in [0, 1]). Raises PageError for a missing, empty or full mask."""
    if isinstance(image, (str, os.PathLike)):
        image = open_image(image, "image", max_side)
    if isinstance(mask, (str, os.PathLike)):
        mask = open_image(mask, "mask", max_side)
    if max(image.size) > max_side:
        raise PageError(f"The image is {image.width} x {image.height} px; this page takes at most {max_side} px.")
    rgba = _pixels(image_to_tensor, image, "image")
    if mask is not None:
        mask_t = _pixels(gray_to_tensor, mask, "mask")
        if mask_t.shape[-2:] != rgba.shape[-2:]:
            raise PageError(
                f"The mask is {mask_t.shape[-1]} x {mask_t.shape[-2]} px but the image is {rgba.shape[-1]} x "
                f"{rgba.shape[-2]} px; they must be the same size."
            )
    elif rgba.shape[0] == 4:
        mask_t = rgba[3:4]
    else:
        raise PageError(
            "This image has no transparency, so the page cannot tell the object from its background. Upload an RGBA "
            "cut-out (a PNG whose background is transparent) or add a mask (white = object) under "
            "'Mask, background, padding'."
        )
    object_pixels = (mask_t >= 0.5).float().mean().item()  # binarised at 0.5 as the model sees it (docs/design.md §8)
    if object_pixels == 0.0:
        raise PageError(
            "The mask is empty: no pixel belongs to the object (alpha or mask >= 50 %). Upload a cut-out whose "
            "object is opaque, or a mask that is white on the object."
        )
    if object_pixels == 1.0:
        raise PageError(
            "The mask covers the whole image, so there is no ground left for a shadow (an image without a "
            "transparent background?). Upload a cut-out with a transparent background, or a mask that is white on "
            "the object only."
        )
    return rgba[:3], mask_t


@dataclass
class PreparedObject:
    """One uploaded object, encoded once: every slider move reuses `latents`."""

    latents: ObjectLatents
    rgb: torch.Tensor  # [3,H,W] in [0, 1]: the (padded) canvas the outputs are made at
    mask: torch.Tensor  # [1,H,W]
    stem: str  # names the downloads
    output_dir: Path  # this object's PNGs (one set at a time)


def prepare_object(
    pipe: ShadowPipeline,
    image,
    mask=None,
    padding: float = 0.0,
    stem: str = "cutout",
    max_side: int = MAX_IMAGE_SIDE,
) -> PreparedObject:
    """Reads, pads (`padding` x each side, so long shadows are not cut) and encodes the object once."""
    padding = slider_number(padding, "Padding (a fraction of each side)", (0.0, PADDING_MAX))
    rgb, mask_t = pad_canvas(*read_cutout(image, mask, max_side), padding)
    latents = pipe.encode_object(rgb[None], mask_t[None])
    return PreparedObject(latents, rgb, mask_t, stem, Path(tempfile.mkdtemp(prefix="shadow-app-")))


def read_background(image, max_side: int = MAX_IMAGE_SIDE) -> torch.Tensor | None:
    """Optional background (PIL or path) -> [3,H,W] in [0, 1]; None -> None (white)."""
    if image is None:
        return None
    if isinstance(image, (str, os.PathLike)):
        image = open_image(image, "background", max_side)
    return _pixels(image_to_tensor, image, "background")[:3]


@contextlib.contextmanager
def pipeline_warnings():
    """Collects what pipeline_shadow logs as warnings while the block runs (`lights_from_environment` says there how
    much low sky it folded into ambient or clamped), so that the page can show it to the person, not only the log."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = Collect(logging.WARNING)
    pipeline_shadow.logger.addHandler(handler)
    try:
        yield messages
    finally:
        pipeline_shadow.logger.removeHandler(handler)


@dataclass
class PageEnvironment:
    """An uploaded environment map, turned into lights once per upload: every slider move reuses `lighting`."""

    name: str  # the file's stem, for the downloads
    lighting: EnvironmentLighting
    warnings: list[str]  # legal but odd: low sky folded or clamped, not 2:1


def read_environment(
    path: str | os.PathLike, max_lights: int = 3, low_sky: str = "ambient", max_side: int = MAX_IMAGE_SIDE
) -> PageEnvironment:
    """An equirectangular environment map (PNG/JPEG; HDR/EXR when OpenCV or imageio is installed) -> its lights and
    ambient (`lights_from_environment`). An 8-bit map gets the header check of any upload, with twice the side: an
    equirectangular map is twice as wide as it is high, and it is averaged down to 256 px wide anyway."""
    path = Path(path)
    if path.suffix.lower() not in ENVIRONMENT_SUFFIXES:
        raise PageError(
            f"The environment map {path.name} is not a {'/'.join(s[1:].upper() for s in ENVIRONMENT_SUFFIXES)} file."
        )
    if not 1 <= max_lights <= ENVIRONMENT_MAX_LIGHTS:
        raise PageError(f"The environment's lights must number 1..{ENVIRONMENT_MAX_LIGHTS}, got {max_lights}.")
    if low_sky not in LOW_SKY_CHOICES:
        raise PageError(f"Low sky must be one of {', '.join(LOW_SKY_CHOICES)}, got {low_sky!r}.")
    notes = []
    source = str(path)  # HDR/EXR: lights_from_environment reads it (or says which reader to install)
    if path.suffix.lower() in (".png", ".jpg", ".jpeg"):
        source = open_image(path, "environment map", 2 * max_side).convert("RGB")
        if abs(source.width / source.height - 2.0) > 0.1:
            notes.append(
                f"The environment map {path.name} is {source.width} x {source.height} px, not 2:1: is it an "
                "equirectangular map (row 0 = straight up, the centre column = the image's right)? Its lights may "
                "stand in odd places."
            )
    with pipeline_warnings() as messages:
        try:
            lighting = lights_from_environment(source, max_lights=max_lights, low_sky=low_sky)
        except ValueError as error:
            raise PageError(f"The environment map {path.name} gives no usable light: {error}") from error
    notes += messages
    if not messages and lighting.ambient >= 0.05:  # the pipeline warns from 25 %; the page says it from 5 %
        notes.append(
            f"{100 * lighting.ambient:.0f} % of the environment's light on the ground comes from lower than "
            f"{pipeline_shadow.TRAINED_THETA_MAX_DEG:g}° in the sky (or from faint spots): it goes into ambient, "
            "which lightens the shadow but casts none (the model was trained on theta <= 45°)."
        )
    return PageEnvironment(name=path.stem, lighting=lighting, warnings=notes)


def _count(lights: Sequence[Light]) -> str:
    return f"{len(lights)} light{'s' if len(lights) != 1 else ''}"


def describe_environment(environment: PageEnvironment) -> str:
    """The lights an environment map gave, as a Markdown table for the page."""
    lighting = environment.lighting
    rows = "\n".join(
        f"| {number} | {light.theta:.1f}° | {light.phi:.1f}° | {light.size:.2g} | {light.power:.3g} |"
        for number, light in enumerate(lighting.lights, 1)
    )
    return (
        f"**{html.escape(environment.name)}**: {_count(lighting.lights)} (in place of the sliders' lights); "
        f"ambient {lighting.ambient:.2f} (light that casts no shadow the model can draw).\n\n"
        f"| light | theta | phi | size | power |\n|---|---|---|---|---|\n{rows}"
    )


def slider_number(value, what: str, limits: tuple[float, float]) -> float:
    """A slider's value as a float within the slider's range, or a PageError naming it. The sliders themselves cannot
    send anything else, but the page's API (gradio_client, a plain HTTP POST) takes any JSON: None, a string, NaN."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    low, high = limits
    if not (math.isfinite(number) and low <= number <= high):
        raise PageError(f"{what} must be a number from {low:g} to {high:g}, got {value!r}.")
    return number


def slider_light(values: Sequence, number: int, power=1.0) -> Light:
    """Light `number`'s (theta, phi, size) slider values (and its power) -> a Light, each value checked."""
    names = ("theta", "phi", "size", "power")
    limits = (THETA_RANGE, PHI_RANGE, SIZE_RANGE, POWER_RANGE)
    checked = [slider_number(v, f"Light {number}'s {n}", r) for v, n, r in zip((*values, power), names, limits)]
    return Light(*checked)


def slider_lights(light_values: Sequence[float]) -> list[Light]:
    """The page's light sliders -> the lights that are on: light 1's (theta, phi, size), then for each extra light
    (on, theta, phi, size, power). Light 1 has power 1; the others' powers are relative to it."""
    lights = [slider_light(light_values[:3], 1)]
    extras = light_values[3:]
    for k in range(0, len(extras), 5):
        on, theta, phi, size, power = extras[k : k + 5]
        if on:
            lights.append(slider_light((theta, phi, size), 2 + k // 5, power))
    return lights


# ---------------------------------------------------------------------------------------------------------------------
# 3. A slider move: UNet + decoder on the stored latents, then compositing.
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Rendering:
    shadow_map: torch.Tensor  # [1,H,W] in [0, 1], the model's raw map at the canvas size
    composite: PIL.Image.Image  # RGB
    shadow: PIL.Image.Image  # L, 255 = full shadow
    layer: PIL.Image.Image  # RGBA, black, alpha = intensity x shadow
    seconds: float  # server time of the move: UNet + decoder + compositing


def as_lights(lights: Light | Sequence[Light]) -> list[Light]:
    return [lights] if isinstance(lights, Light) else list(lights)


def render_light(
    pipe: ShadowPipeline,
    prepared: PreparedObject,
    lights: Light | Sequence[Light],
    intensity: float = DEFAULT_INTENSITY,
    background: torch.Tensor | None = None,
    seed: int = 0,
    ambient: float = 0.0,
) -> Rendering:
    """The shadow of `prepared` under one light or several (and `ambient`, the unshadowed share of the light), without
    re-encoding the object. One light without ambient takes the single-light call, so the page with one light is
    exactly what it was; several take `pipe(lights=...)`, one batched UNet call whose maps are composed by their
    irradiance. The starting noise is the same (`seed`) for every move, so the shadow changes only because the light
    does."""
    lights = as_lights(lights)
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    if len(lights) == 1 and ambient == 0.0:  # power is relative: alone, a light's power changes nothing
        light_args = {"theta": lights[0].theta, "phi": lights[0].phi, "size": lights[0].size}
    else:
        light_args = {"lights": lights, "ambient": ambient}
    shadow_map = pipe(object_latents=prepared.latents, generator=generator, output_type="pt", **light_args).shadow_maps[
        0
    ]  # [1,H,W]
    canvas = background if background is not None else torch.ones_like(prepared.rgb)  # white by default
    result = composite(prepared.rgb, prepared.mask, shadow_map, canvas, intensity)  # [3,H,W]
    composite_image = PIL.Image.fromarray((result.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8))
    return Rendering(
        shadow_map=shadow_map,
        composite=composite_image,
        shadow=shadow_map_to_pil(shadow_map),
        layer=shadow_layer(shadow_map, intensity),
        seconds=time.perf_counter() - start,
    )


def light_tag(light: Light) -> str:
    """Names a light in file names, as generate_shadows.py's sweeps do: t<theta>_p<phi>_s<size>."""
    return f"t{light.theta:g}_p{wrap_phi(light.phi):g}_s{light.size:g}"


def lighting_tag(lights: Light | Sequence[Light], environment: str | None = None) -> str:
    """Names the lighting in file names: one light as light_tag; several joined by "+", each with its power
    (w<power>); an environment map by its file stem, as generate_shadows.py does (env_<stem>)."""
    if environment is not None:
        return f"env_{environment}"
    lights = as_lights(lights)
    if len(lights) == 1:
        return light_tag(lights[0])
    return "+".join(f"{light_tag(light)}_w{light.power:.3g}" for light in lights)


def save_rendering(
    rendering: Rendering, prepared: PreparedObject, lights: Light | Sequence[Light], environment: str | None = None
) -> dict[str, Path]:
    """Writes the three PNGs (named by object and lighting) into the object's folder, replacing the previous set: the
    page server copies each returned file into its own cache, so only the newest set is needed here."""
    for old in prepared.output_dir.glob("*.png"):
        old.unlink()
    paths = {}
    tag = lighting_tag(lights, environment)
    for kind in OUTPUT_KINDS:
        paths[kind] = prepared.output_dir / f"{prepared.stem}_{tag}_{kind}.png"
        getattr(rendering, kind).save(paths[kind], compress_level=1)  # fast: these are rewritten on every move
    return paths


# ---------------------------------------------------------------------------------------------------------------------
# 4. Where the light stands: a view from above (phi) and from the side (theta), sized by the light's size.
# ---------------------------------------------------------------------------------------------------------------------


def _font(size: int):
    try:
        return PIL.ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return PIL.ImageFont.load_default()


def light_dial(lights: Light | Sequence[Light], size: int = 180, ambient: float = 0.0) -> PIL.Image.Image:
    """Two small panels. Left, from above: the object at the centre, the camera below it (on the -y side, as in the
    renders), each light at azimuth phi (0 = image right, counter-clockwise) and at a radius growing with theta, its
    shadow pointing away from it. Right, from the side: each light at theta from straight up and its rays past the
    object onto the ground. A light's square grows with its size (bigger = softer shadow); several lights are
    numbered as on the page."""
    lights = as_lights(lights)
    numbered = len(lights) > 1
    width, height = 2 * size, size
    image = PIL.Image.new("RGB", (width, height), (250, 250, 247))
    draw = PIL.ImageDraw.Draw(image)
    font = _font(max(9, size // 15))
    ink, faint, sun, shade = (40, 40, 40), (200, 200, 195), (245, 170, 20), (90, 90, 90)

    def half_side(light: Light) -> float:  # the light's square, in pixels
        return 2 + light.size * size / 120

    def square(x: float, y: float, light: Light, number: int) -> None:
        half = half_side(light)
        draw.rectangle((x - half, y - half, x + half, y + half), fill=sun, outline=ink)
        if numbered:
            draw.text((x + half + 2, y - half - 4), str(number), fill=ink, font=font)

    # From above: rings at theta = 15, 30, 45 degrees; radius proportional to theta (90 degrees = the panel's edge).
    cx, cy, radius = size / 2, size / 2 + 4, size * 0.40
    for ring_deg in (15, 30, 45):
        r = radius * ring_deg / 45
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=faint)
    draw.text((cx + radius * 0.71 + 2, cy - radius * 0.71 - 10), "45°", fill=shade, font=font)
    above = []
    for light in lights:
        r, phi = radius * light.theta / 45, math.radians(wrap_phi(light.phi))
        above.append((cx + r * math.cos(phi), cy - r * math.sin(phi)))  # y up on the page
        if light.theta > 0:  # the shadow falls away from the light
            sx, sy = cx - 0.9 * r * math.cos(phi), cy + 0.9 * r * math.sin(phi)
            draw.line((cx, cy, sx, sy), fill=shade, width=max(3, size // 30))
    draw.rectangle((cx - 5, cy - 5, cx + 5, cy + 5), fill=ink)
    draw.polygon([(cx, cy + radius + 2), (cx - 6, cy + radius + 12), (cx + 6, cy + radius + 12)], fill=ink)
    draw.text((cx + 9, cy + radius + 2), "camera", fill=ink, font=font)
    for number, (light, (lx, ly)) in enumerate(zip(lights, above), 1):
        square(lx, ly, light, number)
    title = f"phi {wrap_phi(lights[0].phi):g}°" if not numbered else f"{len(lights)} lights"
    draw.text((4, 2), f"from above: {title}", fill=ink, font=font)

    # From the side, in each light's vertical plane: the ground, the object (a post), the light on a quarter circle at
    # theta from straight up, drawn on the image side the light is on (left when phi points left) so both panels agree.
    ox, ground, post = size + size / 2, size - 22, size * 0.22
    arc = size * 0.62
    draw.line((size + 8, ground, width - 8, ground), fill=ink, width=2)
    draw.arc((ox - arc, ground - arc, ox + arc, ground + arc), 270 - 45, 270 + 45, fill=faint, width=2)
    beside = []
    for light in lights:
        theta = math.radians(light.theta)
        side = -1.0 if math.cos(math.radians(wrap_phi(light.phi))) < -1e-9 else 1.0
        lx2, ly2 = ox + side * arc * math.sin(theta), ground - arc * math.cos(theta)
        shadow_end = ox - side * post * math.tan(theta)  # the ray over the post's top reaches the ground here
        draw.line((ox, ground, shadow_end, ground), fill=shade, width=max(4, size // 25))
        draw.line((lx2, ly2, ox, ground - post), fill=sun, width=1)
        draw.line((ox, ground - post, shadow_end, ground), fill=sun, width=1)
        beside.append((lx2, ly2))
    draw.rectangle((ox - 3, ground - post, ox + 3, ground), fill=ink)
    for number, (light, (lx2, ly2)) in enumerate(zip(lights, beside), 1):
        square(lx2, ly2, light, number)
    thetas = ", ".join(f"{light.theta:.3g}°" for light in lights)
    sizes = ", ".join(f"{light.size:.2g}" for light in lights)
    footer = f"light size {sizes} (bigger = softer)" if not numbered else f"sizes {sizes} (bigger = softer)"
    if ambient > 0:
        footer += f", ambient {ambient:.2f}"
    draw.text(
        (size + 4, 2), f"from the side: theta {thetas if numbered else f'{lights[0].theta:g}°'}", fill=ink, font=font
    )
    draw.text((size + 4, height - 16), footer, fill=ink, font=font)
    draw.line((size, 0, size, height), fill=faint)
    return image


# ---------------------------------------------------------------------------------------------------------------------
# 5. The page.
# ---------------------------------------------------------------------------------------------------------------------


def page_message(text: str) -> gr.Error:
    """An error toast on the page. Gradio renders the message as HTML: escape it, so a file name or an exception's
    text can never inject markup."""
    return gr.Error(html.escape(text, quote=False), print_exception=False)


def _human_errors(action: str):
    """Event handlers show a person's message on the page: PageError as written, anything unexpected as one line
    (the stack trace goes to the server log only)."""

    def decorate(function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            try:
                return function(*args, **kwargs)
            except gr.Error:
                raise
            except PageError as error:
                raise page_message(str(error)) from error
            except Exception as error:
                logger.exception("Unexpected error while %s", action)
                raise page_message(
                    f"Something went wrong while {action}: {type(error).__name__}: {error}. The details are in the "
                    "server log."
                ) from error

        return wrapper

    return decorate


def _status(
    lights: Sequence[Light],
    ambient: float,
    environment: str | None,
    intensity: float,
    rendering: Rendering,
    device: str,
) -> str:
    timing = f"{rendering.seconds * 1000:.0f} ms on {device}"
    if len(lights) == 1 and environment is None:
        light = lights[0]
        return (
            f"theta {light.theta:g}°, phi {wrap_phi(light.phi):g}°, size {light.size:g}, intensity {intensity:g} · "
            f"{timing} (UNet + decoder; the object was encoded once)"
        )
    described = "; ".join(
        f"light {number}: theta {light.theta:.4g}°, phi {wrap_phi(light.phi):.4g}°, size {light.size:.3g}, "
        f"power {light.power:.3g}"
        for number, light in enumerate(lights, 1)
    )
    source = f"environment {environment}: " if environment is not None else ""
    return (
        f"{source}{described}{f'; ambient {ambient:.2f}' if ambient else ''} · intensity {intensity:g} · {timing} "
        f"({_count(lights)} in one batched UNet call + decoder; the object was encoded once)"
    )


@dataclass
class LightControls:
    """The sliders of one light. Light 1 has theta, phi and size; an extra light adds its power (relative to light
    1's), an "on" box and a "Remove" button, in a group that "Add light" shows."""

    theta: gr.Slider
    phi: gr.Slider
    size: gr.Slider
    power: gr.Slider | None = None
    on: gr.Checkbox | None = None
    group: gr.Accordion | None = None
    remove: gr.Button | None = None

    @property
    def sliders(self) -> list[gr.Slider]:
        return [self.theta, self.phi, self.size, *([self.power] if self.power is not None else [])]

    @property
    def inputs(self) -> list:
        """What `slider_lights` reads, in its order."""
        return [*([self.on] if self.on is not None else []), *self.sliders]


def light_controls(light: Light = DEFAULT_LIGHT, number: int = 1) -> LightControls:
    prefix = "" if number == 1 else f"light {number}: "  # light 1 keeps the page's original labels
    return LightControls(
        theta=gr.Slider(*THETA_RANGE, value=light.theta, step=1, label=f"{prefix}theta (°): 0 = light straight above"),
        phi=gr.Slider(*PHI_RANGE, value=light.phi, step=1, label=f"{prefix}phi (°): 0 = light on the right; 360 = 0"),
        size=gr.Slider(
            *SIZE_RANGE, value=light.size, step=0.5, label=f"{prefix}size: the light's side, bigger = softer"
        ),
    )


def extra_light_controls(light: Light, number: int) -> LightControls:
    """Light `number` (2..MAX_LIGHTS): hidden and off until "Add light" shows it."""
    with gr.Accordion(f"Light {number}", open=True, visible=False, elem_id=f"light-{number}") as group:
        on = gr.Checkbox(value=False, label=f"light {number} on", elem_id=f"light-{number}-on")
        controls = light_controls(light, number)
        power = gr.Slider(
            *POWER_RANGE, value=light.power, step=0.05, label=f"light {number}: power, relative to light 1's (1)"
        )
        remove = gr.Button(f"Remove light {number}", size="sm", elem_id=f"remove-light-{number}")
    controls.power, controls.on, controls.group, controls.remove = power, on, group, remove
    return controls


def build_demo(model: LoadedModel, seed: int = 0, max_side: int = MAX_IMAGE_SIDE) -> gr.Blocks:
    """The page for `model` (which may have failed to load: the page then says why and refuses uploads)."""

    def require_model() -> ShadowPipeline:
        if model.pipe is None:
            raise page_message(model.error)
        return model.pipe

    def forget_object(prepared):
        """First step of every new upload: the old object must not be re-lit while the new one loads or fails. Its
        PNGs can go (the page server has its own copies of what it showed)."""
        if prepared is not None:
            shutil.rmtree(prepared.output_dir, ignore_errors=True)
        return None, None, None, None, ""

    @_human_errors("reading the upload")
    def load_object(image_path, mask_path, padding, *light_inputs):
        if image_path is None:
            return None, None, None, None, ""
        pipe = require_model()
        prepared = prepare_object(pipe, image_path, mask_path, padding, Path(image_path).stem, max_side)
        return (prepared, *relight(prepared, *light_inputs))

    @_human_errors("moving the light")
    def relight(prepared, environment, background_path, intensity, *light_values):
        if environment is not None:  # the environment's lights replace the sliders'
            lights, ambient, name = environment.lighting.lights, environment.lighting.ambient, environment.name
        else:
            lights, ambient, name = slider_lights(light_values), 0.0, None
        dial_image = light_dial(lights, ambient=ambient)
        if prepared is None:
            return None, None, None, dial_image, "Upload a cut-out (or pick an example) to see its shadow."
        background_image = read_background(background_path, max_side)
        intensity = slider_number(intensity, "Intensity", INTENSITY_RANGE)
        rendering = render_light(require_model(), prepared, lights, intensity, background_image, seed, ambient)
        paths = save_rendering(rendering, prepared, lights, name)
        return (
            *(str(paths[kind]) for kind in OUTPUT_KINDS),
            dial_image,
            _status(lights, ambient, name, intensity, rendering, model.device),
        )

    def add_light(shown):
        """Shows (and turns on) the first hidden extra light."""
        hidden = [k for k, is_shown in enumerate(shown) if not is_shown]
        if not hidden:
            gr.Warning(f"The page takes at most {MAX_LIGHTS} lights; remove one first, or use an environment map.")
            return shown, *(gr.update() for _ in range(2 * len(shown)))
        shown = [*shown[: hidden[0]], True, *shown[hidden[0] + 1 :]]
        groups = [gr.update(visible=True) if k == hidden[0] else gr.update() for k in range(len(shown))]
        ons = [gr.update(value=True) if k == hidden[0] else gr.update() for k in range(len(shown))]
        return shown, *groups, *ons

    def light_remover(slot: int):
        def remove_light(shown):
            """Hides extra light `slot` and turns it off."""
            return [*shown[:slot], False, *shown[slot + 1 :]], gr.update(visible=False), gr.update(value=False)

        return remove_light

    @_human_errors("reading the environment map")
    def load_environment_map(path, max_lights, low_sky):
        if path is None:
            return None, ENVIRONMENT_HINT
        environment = read_environment(path, int(max_lights), low_sky, max_side)
        for note in environment.warnings:
            gr.Warning(html.escape(note, quote=False))
        return environment, describe_environment(environment)

    with gr.Blocks(title="Controllable shadows: move the light", analytics_enabled=False) as demo:
        gr.Markdown(
            "## Move the light, watch the shadow\n"
            "Upload a cut-out (PNG with a transparent background) or pick an example, then drag the sliders. The "
            "object is encoded once; each move runs one diffusion step. "
            f"Model: `{model.name}` on {model.device}."
        )
        if model.error:
            gr.Markdown(f"**The model is not available.** {model.error}", elem_id="model-error")
        prepared_state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                cutout = gr.Image(
                    label="Cut-out (RGBA) or image",
                    type="filepath",
                    image_mode=None,  # keep the alpha channel (and an RGB image without one) as uploaded
                    sources=["upload", "clipboard"],
                    elem_id="cutout",
                )
                with gr.Accordion("Mask, background, padding", open=False):
                    mask = gr.Image(
                        label="Mask (white = object), for an image without transparency",
                        type="filepath",
                        image_mode=None,
                        sources=["upload", "clipboard"],
                        elem_id="mask",
                    )
                    background = gr.Image(
                        label="Background (default: white)",
                        type="filepath",
                        image_mode=None,
                        sources=["upload", "clipboard"],
                        elem_id="background",
                    )
                    padding = gr.Slider(
                        0.0,
                        PADDING_MAX,
                        value=0.0,
                        step=0.05,
                        label="Padding: canvas added on each side (fraction), so long shadows are not cut",
                        elem_id="padding",
                    )
                examples = sorted(str(path) for path in EXAMPLES_DIR.glob("*.png"))
                if examples:
                    gr.Examples(examples=[[path] for path in examples], inputs=[cutout], label="Examples")
            with gr.Column(scale=1):
                dial = gr.Image(
                    value=light_dial(DEFAULT_LIGHT),
                    label="Where the light stands",
                    show_label=False,
                    interactive=False,
                    format="png",
                    buttons=[],
                    elem_id="dial",
                )
                lights = light_controls()
                extra_lights = [extra_light_controls(light, n) for n, light in enumerate(EXTRA_LIGHTS, 2)]
                add_button = gr.Button("Add light", size="sm", elem_id="add-light")
                with gr.Accordion("Environment map (its lights replace the sliders')", open=False):
                    environment_file = gr.File(
                        label="Equirectangular environment map (row 0 = straight up)",
                        file_types=list(ENVIRONMENT_SUFFIXES),
                        type="filepath",
                        elem_id="environment",
                    )
                    environment_max_lights = gr.Slider(
                        1, ENVIRONMENT_MAX_LIGHTS, value=3, step=1, label="environment: at most this many lights"
                    )
                    low_sky = gr.Radio(
                        list(LOW_SKY_CHOICES),
                        value="ambient",
                        label="light from lower than 45° (the model's range): into ambient, or moved up to 45°",
                    )
                    environment_lights = gr.Markdown(ENVIRONMENT_HINT, elem_id="environment-lights")
                intensity = gr.Slider(
                    *INTENSITY_RANGE, value=DEFAULT_INTENSITY, step=0.05, label="intensity (compositing only)"
                )
                status = gr.Markdown("Upload a cut-out (or pick an example) to see its shadow.", elem_id="status")
        with gr.Row():
            composite_out = gr.Image(
                label="Composite", interactive=False, format="png", buttons=["download"], elem_id="composite"
            )
            shadow_out = gr.Image(
                label="Shadow map (255 = full shadow)",
                interactive=False,
                format="png",
                buttons=["download"],
                elem_id="shadow",
            )
            layer_out = gr.Image(
                label="Shadow layer (black, alpha) for image editors",
                interactive=False,
                format="png",
                image_mode="RGBA",
                buttons=["download"],
                elem_id="layer",
            )

        environment_state = gr.State(None)
        shown_state = gr.State([False] * len(extra_lights))
        light_inputs = [
            environment_state,
            background,
            intensity,
            *lights.sliders,
            *(control for extra in extra_lights for control in extra.inputs),
        ]
        rendered = [composite_out, shadow_out, layer_out, dial, status]
        relight_now = {"fn": relight, "inputs": [prepared_state, *light_inputs], "outputs": rendered}
        for trigger in (cutout.change, mask.change, padding.release):
            trigger(
                forget_object,
                inputs=[prepared_state],
                outputs=[prepared_state, composite_out, shadow_out, layer_out, status],
            ).then(
                load_object,
                inputs=[cutout, mask, padding, *light_inputs],
                outputs=[prepared_state, *rendered],
                show_progress="minimal",
            )
        # Only the latest slider value is computed when the slider moves faster than the model: while one move is
        # being computed, later ones replace each other and only the last runs next. No queue of stale frames.
        gr.on(
            triggers=[
                *(slider.input for slider in lights.sliders),
                *(control.input for extra in extra_lights for control in extra.inputs),
                intensity.input,
                background.change,
            ],
            trigger_mode="always_last",
            show_progress="hidden",
            **relight_now,
        )
        groups, ons = [extra.group for extra in extra_lights], [extra.on for extra in extra_lights]
        add_button.click(add_light, inputs=[shown_state], outputs=[shown_state, *groups, *ons]).then(
            show_progress="hidden", **relight_now
        )
        for slot, extra in enumerate(extra_lights):
            extra.remove.click(
                light_remover(slot),
                inputs=[shown_state],
                outputs=[shown_state, extra.group, extra.on],
            ).then(show_progress="hidden", **relight_now)
        for trigger in (environment_file.change, environment_max_lights.release, low_sky.input):
            trigger(  # first forget the old map: a file that fails must not leave its predecessor's lights on
                lambda: (None, ENVIRONMENT_HINT), outputs=[environment_state, environment_lights]
            ).then(
                load_environment_map,
                inputs=[environment_file, environment_max_lights, low_sky],
                outputs=[environment_state, environment_lights],
            ).then(show_progress="hidden", **relight_now)
    return demo


def launch_kwargs() -> dict:
    """launch() settings shared by `main` and the tests: system fonts (nothing fetched from a font CDN, so the page
    also works offline) and no server-side rendering (it would need Node)."""
    theme = gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
    )
    return {"theme": theme, "ssr_mode": False, "max_file_size": "50mb"}


def default_threads() -> int:
    """All cores but one: the page server (event loop, PNG encoding) needs one too, and on a busy 2-core machine two
    torch threads that wait on each other are many times slower than one (benchmarks/bench_app.py)."""
    return max(1, (os.cpu_count() or 1) - 1)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--pretrained_model_name_or_path",
        "--model",
        dest="model",
        default=os.environ.get("SHADOW_MODEL", str(DEFAULT_MODEL)),
        help="A trained shadow pipeline folder or Hub id (default: $SHADOW_MODEL, else the embedded "
        "models/shadow-small).",
    )
    parser.add_argument("--device", default=None, help="Default: cuda when available, else cpu.")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), help="Address to serve.")
    parser.add_argument(
        "--port",
        default=os.environ.get("GRADIO_SERVER_PORT", "7860"),
        help="TCP port, 1-65535 (default: $GRADIO_SERVER_PORT, else 7860).",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: all cores but one, which is left to the page server; 1 on 2 cores).",
    )
    parser.add_argument("--seed", type=int, default=0, help="Starting noise, the same for every slider move.")
    parser.add_argument("--max_side", type=int, default=MAX_IMAGE_SIDE, help="Largest accepted image side, px.")
    args = parser.parse_args(argv)
    given = args.port  # the default comes from $GRADIO_SERVER_PORT, so it is checked like the flag
    try:
        args.port = int(given)
    except (TypeError, ValueError):
        args.port = None
    if args.port is None or not 1 <= args.port <= 65535:
        parser.error(f"--port (or $GRADIO_SERVER_PORT) must be an integer in 1-65535, got {given!r}.")
    if args.max_side < 8:
        parser.error(f"--max_side must be >= 8 px, got {args.max_side}.")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}.")
    if args.device is not None:
        try:
            check_device(args.device)
        except ValueError as error:
            parser.error(str(error))
    return args


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args = parse_args(argv)
    torch.set_num_threads(args.threads or default_threads())
    model = load_model(args.model, args.device)
    if model.error:
        logger.error("%s The page starts anyway and shows this message.", model.error)
    demo = build_demo(model, seed=args.seed, max_side=args.max_side)
    try:
        demo.queue(default_concurrency_limit=1).launch(server_name=args.host, server_port=args.port, **launch_kwargs())
    except OSError as error:  # the port is taken, or the host is not an address of this machine
        logger.error("Cannot serve the page on --host %s --port %d: %s", args.host, args.port, error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
