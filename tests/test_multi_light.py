"""Several lights: the irradiance math, the batched pipeline call and lights from an environment map."""

from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import PIL.Image
import pytest
import torch

from pipeline_shadow import (
    Light,
    area_light_irradiance,
    compose_light_maps,
    composite,
    equirect_directions,
    estimate_object_height,
    irradiance_fractions,
    light_coefficients,
    light_weights,
    lights_from_environment,
    point_light_irradiance,
    shadow_centre,
    shadow_layer,
    square_light_corners,
)


def _quadrature_irradiance(point: np.ndarray, light: Light, n: int = 200) -> float:
    """E = integral over the square of L cos(emission) cos(receiver) / d^2 dA, midpoint rule."""
    corners = square_light_corners(light.theta, light.phi, light.size)
    u = (np.arange(n) + 0.5) / n
    patches = corners[0] + u[:, None, None] * (corners[1] - corners[0]) + u[None, :, None] * (corners[3] - corners[0])
    normal = -corners.mean(axis=0) / np.linalg.norm(corners.mean(axis=0))  # emits toward the origin
    to_point = point - patches
    distance = np.linalg.norm(to_point, axis=-1)
    cos_emission = np.clip(to_point @ normal / distance, 0, None)
    cos_receiver = np.clip(-to_point[..., 2] / distance, 0, None)
    radiance = light.power / (math.pi * light.size**2)
    return float((radiance * cos_emission * cos_receiver / distance**2).sum() * light.size**2 / n**2)


@pytest.mark.parametrize(
    "light", [Light(30, 0, 2), Light(45, 70, 8), Light(0, 0, 8), Light(20, 200, 5, power=3)], ids=str
)
def test_area_light_irradiance_matches_quadrature(light):
    for point in (np.zeros(3), np.array([-3.0, 1.0, 0.0]), np.array([1.5, -2.0, 0.0])):
        assert area_light_irradiance(point, light)[0] == pytest.approx(_quadrature_irradiance(point, light), rel=1e-4)


def test_point_light_approximation_and_what_power_means():
    # Far field: E(0) -> power cos(theta) / (pi r^2); a small light is within 2 %, a big one (side 8 at r = 8) is not.
    assert point_light_irradiance(Light(30, 0, 2)) == pytest.approx(light_weights([Light(30, 0, 2)])[0], rel=0.025)
    assert point_light_irradiance(Light(30, 0, 8)) > 1.25 * light_weights([Light(30, 0, 8)])[0]
    small = area_light_irradiance(np.zeros(3), Light(30, 0, 0.05))[0]
    assert small == pytest.approx(point_light_irradiance(Light(30, 0, 0.05)), rel=1e-4)
    # Total power: irradiance scales with power, and the far-field value does not depend on the size.
    assert light_weights([Light(10, 0, 2, power=2.0)])[0] == pytest.approx(2 * light_weights([Light(10, 0, 2)])[0])
    # phi only turns the light: the same weight at the origin.
    np.testing.assert_allclose(light_weights([Light(30, 0, 4), Light(30, 123, 4)]), light_weights([Light(30, 0, 4)])[0])
    # The square emits toward the origin only: a point behind it gets nothing.
    assert area_light_irradiance(np.array([[0.0, 0.0, 9.0]]), Light(0, 0, 2))[0] == 0.0


def test_compose_light_maps_is_the_coefficient_weighted_sum():
    maps = np.stack([np.full((4, 5), 1.0), np.zeros((4, 5)), np.full((4, 5), 0.5)])
    assert compose_light_maps(maps, [0.25, 0.25, 0.5]) == pytest.approx(np.full((4, 5), 0.5))
    assert compose_light_maps(maps[:1], [1.0]) == pytest.approx(maps[0])  # one light: its own map
    assert compose_light_maps(maps, [0.25, 0.25, 0.5], ambient=0.5) == pytest.approx(np.full((4, 5), 0.25))
    assert compose_light_maps(maps, [1.0, 0.0, 1.0]) == pytest.approx(np.ones((4, 5)))  # clamped to [0, 1]
    irradiance = np.stack([np.ones((4, 5)), np.zeros((4, 5)), np.zeros((4, 5))])
    irradiance[1, :, :2] = 1.0
    expected = np.ones((4, 5))
    expected[:, :2] = 0.5
    assert compose_light_maps(maps, irradiance_fractions(irradiance)) == pytest.approx(expected)
    torch_maps = torch.from_numpy(maps).float()
    assert torch.allclose(compose_light_maps(torch_maps, [0.25, 0.25, 0.5]), torch.full((4, 5), 0.5))
    with pytest.raises(ValueError, match="ambient"):
        compose_light_maps(maps, [1, 1, 1], ambient=1.0)
    with pytest.raises(ValueError, match=">= 0"):
        compose_light_maps(maps, [1, -1, 1])
    with pytest.raises(ValueError, match="3 light maps"):
        compose_light_maps(maps, [1, 1])
    with pytest.raises(ValueError, match="positive sum"):
        irradiance_fractions(np.zeros((2, 3)))


def test_light_coefficients_where_each_shadow_falls():
    key, fill = Light(30, 0, 2), Light(30, 180, 2)
    # At the foot the two mirror-image lights weigh the same.
    np.testing.assert_allclose(light_coefficients([key, fill]), [0.5, 0.5])
    # Where the key light's shadow falls (away from it), the opposite fill light is nearer and stronger.
    coefficients = light_coefficients([key, fill], object_height=2.0)
    assert coefficients[0] == pytest.approx(coefficients[1]) and coefficients[0] < 0.45
    assert light_coefficients([key], object_height=2.0) == pytest.approx([1.0])  # one light: its own map
    # A light straight above has its shadow at the foot; power scales a light's share.
    assert shadow_centre(Light(0, 0, 2), 2.0) == pytest.approx(np.zeros(3))
    strong = light_coefficients([Light(20, 0, 2, power=3.0), Light(20, 90, 2)])
    assert strong[0] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="empty"):
        light_coefficients([])


def test_light_from_any_names_the_problem():
    assert Light.from_any({"theta": 30, "phi": 10}) == Light(30.0, 10.0, 2.0, 1.0)
    assert Light.from_any((30, 10, 4, 0.5)) == Light(30.0, 10.0, 4.0, 0.5)
    with pytest.raises(ValueError, match="unknown colour"):
        Light.from_any({"theta": 30, "colour": 1})
    with pytest.raises(ValueError, match="theta is missing"):
        Light.from_any({"phi": 30})
    with pytest.raises(ValueError, match=r"`lights\[2\].size` must be a number"):
        Light.from_any({"theta": 30, "size": "big"}, "lights[2]")
    with pytest.raises(ValueError, match="must be a Light"):
        Light.from_any(30)


# ----- the pipeline: several lights in one batched UNet call ------------------------------------------------------


def _cutout(height=48, width=64, box=(10, 30, 20, 40)) -> PIL.Image.Image:
    rgba = np.zeros((height, width, 4), np.uint8)
    top, bottom, left, right = box
    rgba[top:bottom, left:right] = [200, 60, 40, 255]
    return PIL.Image.fromarray(rgba, "RGBA")


@pytest.fixture
def lit_pipeline(tiny_pipeline):
    """The tiny pipeline with a random light projection (the converted model ignores the light at init)."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in tiny_pipeline.unet.unet.class_embedding.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    tiny_pipeline.set_progress_bar_config(disable=True)
    return tiny_pipeline


def _count_unet_calls(pipe) -> list[int]:
    batch_sizes = []
    pipe.unet.register_forward_hook(lambda module, args, output: batch_sizes.append(args[0].shape[0]))
    return batch_sizes


LIGHTS = [Light(30, 0, 2), {"theta": 20, "phi": 150, "size": 6, "power": 0.5}, (10, 90, 8, 2.0)]


def test_several_lights_in_one_unet_call_compose_the_single_light_predictions(lit_pipeline):
    image = _cutout()
    calls = _count_unet_calls(lit_pipeline)
    out = lit_pipeline(
        image, lights=LIGHTS, generator=torch.Generator().manual_seed(0), output_type="pt", return_light_maps=True
    )
    assert calls == [3]  # ONE UNet call, one row per light
    assert out.shadow_maps.shape == (1, 1, 48, 64) and out.light_maps[0].shape == (3, 1, 48, 64)
    singles = []
    for light in map(Light.from_any, LIGHTS):  # the same lights one by one, the same seed
        single = lit_pipeline(
            image,
            theta=light.theta,
            phi=light.phi,
            size=light.size,
            generator=torch.Generator().manual_seed(0),
            output_type="pt",
        ).shadow_maps[0]
        singles.append(single)
    singles = torch.stack(singles)  # [3,1,H,W]
    torch.testing.assert_close(out.light_maps[0], singles, atol=1e-5, rtol=0)
    assert not torch.allclose(singles[0], singles[1], atol=1e-3)  # the lights do differ
    mask = torch.from_numpy(np.asarray(image)[..., 3] / 255.0)
    coefficients = light_coefficients([Light.from_any(light) for light in LIGHTS], estimate_object_height(mask))
    torch.testing.assert_close(out.shadow_maps[0], compose_light_maps(singles, coefficients), atol=1e-5, rtol=0)
    half = lit_pipeline(image, lights=LIGHTS, ambient=0.5, generator=torch.Generator().manual_seed(0), output_type="pt")
    torch.testing.assert_close(half.shadow_maps, 0.5 * out.shadow_maps, atol=1e-5, rtol=0)
    # The composed map composites like any map.
    layer = shadow_layer(out.shadow_maps[0], 0.8)
    picture = composite(image, None, out.shadow_maps[0], PIL.Image.new("RGB", (64, 48), (200, 180, 160)))
    assert layer.size == picture.size == (64, 48)


def test_one_light_list_per_image_and_object_latents(lit_pipeline):
    images = [_cutout(), _cutout(box=(5, 40, 30, 50))]
    calls = _count_unet_calls(lit_pipeline)
    prepared = lit_pipeline.encode_object(images)
    out = lit_pipeline(
        object_latents=prepared,
        lights=[[LIGHTS[0]], LIGHTS[1:]],
        generator=torch.Generator().manual_seed(1),
        output_type="np",
        return_light_maps=True,
    )
    assert calls == [3]
    assert out.shadow_maps.shape == (2, 48, 64) and [m.shape[0] for m in out.light_maps] == [1, 2]
    np.testing.assert_allclose(out.shadow_maps[0], out.light_maps[0][0], atol=1e-6)  # one light: its own map
    pil = lit_pipeline(
        images[0], lights=LIGHTS[:2], return_light_maps=True, output_type="pil", background=PIL.Image.new("RGB", (8, 8))
    )
    assert pil.shadow_maps[0].mode == "L" and len(pil.light_maps[0]) == 2 and pil.images[0].size == (64, 48)
    maps, images_out, light_maps = lit_pipeline(images[0], lights=LIGHTS[:2], return_light_maps=True, return_dict=False)
    assert len(light_maps[0]) == 2 and images_out is None


def test_single_light_arguments_unchanged_and_mixing_is_an_error(lit_pipeline):
    image = _cutout()
    default = lit_pipeline(image, generator=torch.Generator().manual_seed(0), output_type="np").shadow_maps
    explicit = lit_pipeline(
        image, theta=30.0, phi=0.0, size=2.0, generator=torch.Generator().manual_seed(0), output_type="np"
    ).shadow_maps
    np.testing.assert_array_equal(default, explicit)
    with pytest.raises(ValueError, match=r"either `lights` .* or `theta`/`size` \(one light\), not both"):
        lit_pipeline(image, theta=20, size=4, lights=LIGHTS)
    with pytest.raises(ValueError, match="apply to `lights=` only"):
        lit_pipeline(image, theta=20, ambient=0.2)
    with pytest.raises(ValueError, match=r"`lights\[1\].theta` must lie in \[0, 90\)"):
        lit_pipeline(image, lights=[LIGHTS[0], (95, 0, 2)])
    with pytest.raises(ValueError, match=r"`lights\[0\]\[0\].size` \(area-light side\) must be > 0"):
        lit_pipeline([image, image], lights=[[(30, 0, 0)], [LIGHTS[0]]])
    with pytest.raises(ValueError, match="has 1 light lists but the batch has 2"):
        lit_pipeline([image, image], lights=[[LIGHTS[0]]])
    with pytest.raises(ValueError, match="power 0"):
        lit_pipeline(image, lights=[(30, 0, 2, 0.0)])
    with pytest.raises(ValueError, match="non-empty list"):
        lit_pipeline(image, lights=[])
    with pytest.raises(ValueError, match=r"a LIST of lights; for one light write lights=\[\(30, 0, 2\)\]"):
        lit_pipeline(image, lights=(30, 0, 2))
    with pytest.raises(ValueError, match="power` .* must be >= 0"):
        lit_pipeline(image, lights=[(30, 0, 2, -1.0)])


# ----- environment maps -> area lights ---------------------------------------------------------------------------


def _environment(height=64, width=128, spots=(), floor=0.0) -> np.ndarray:
    """A float equirectangular map (linear radiance): `floor` everywhere plus discs (theta, phi, radius deg, value)."""
    theta, phi = equirect_directions(height, width)
    directions = _unit(*np.meshgrid(theta, phi, indexing="ij"))
    radiance = np.full((height, width), floor)
    for spot_theta, spot_phi, radius, value in spots:
        angle = np.degrees(np.arccos(np.clip(directions @ _unit(spot_theta, spot_phi), -1, 1)))
        radiance[angle <= radius] = value
    return np.repeat(radiance[..., None], 3, axis=2)


def _unit(theta, phi):
    theta, phi = np.radians(theta), np.radians(phi)
    return np.stack([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)], axis=-1)


def test_equirect_convention():
    theta, phi = equirect_directions(4, 8)
    np.testing.assert_allclose(theta, [22.5, 67.5, 112.5, 157.5])  # row 0 = zenith side
    # Centre column = +x (phi 0, the image's right), phi grows to the left: 1/4 width = +y, 3/4 = -y (camera side).
    np.testing.assert_allclose(phi, [157.5, 112.5, 67.5, 22.5, 337.5, 292.5, 247.5, 202.5])


@pytest.mark.parametrize("spot", [(30.0, 60.0), (10.0, 250.0), (40.0, 0.0)])
def test_one_bright_spot_gives_one_light_at_its_direction(spot, tmp_path):
    environment = _environment(spots=[(*spot, 4.0, 50.0)])
    found = lights_from_environment(environment, max_lights=3)
    assert len(found.lights) == 1 and found.ambient == pytest.approx(0.0)
    light = found.lights[0]
    assert light.theta == pytest.approx(spot[0], abs=1.5)
    assert (light.phi - spot[1] + 180) % 360 - 180 == pytest.approx(0, abs=2.0)
    assert light.size == 2.0 and light.power == 1.0  # a small spot: the sharpest trained light
    # The same through an 8-bit PNG file (sRGB-decoded).
    png = tmp_path / "sky.png"
    PIL.Image.fromarray((np.clip(environment, 0, 1) * 255).astype(np.uint8)).save(png)
    from_png = lights_from_environment(png, max_lights=3).lights
    assert len(from_png) == 1 and from_png[0].theta == pytest.approx(light.theta, abs=0.5)


def test_two_spots_sizes_and_powers():
    # A small bright sun and a wide dimmer patch: two lights, the patch softer; powers follow the irradiance.
    environment = _environment(spots=[(20.0, 0.0, 3.0, 200.0), (30.0, 180.0, 15.0, 2.0)])
    found = lights_from_environment(environment, max_lights=2)
    sun, patch = found.lights
    assert sun.phi == pytest.approx(0.0, abs=2.0) or sun.phi == pytest.approx(360.0, abs=2.0)
    assert patch.phi == pytest.approx(180.0, abs=2.0)
    assert sun.size == 2.0 and 2.0 < patch.size <= 8.0
    irradiance = [light_weights([light])[0] for light in found.lights]
    energy = _environment_energy(environment, [(20.0, 0.0, 3.0)]), _environment_energy(environment, [(30, 180, 15)])
    assert irradiance[1] / irradiance[0] == pytest.approx(energy[1] / energy[0], rel=0.05)


def _environment_energy(environment, discs) -> float:
    height, width = environment.shape[:2]
    theta, phi = equirect_directions(height, width)
    grid_theta, grid_phi = np.meshgrid(theta, phi, indexing="ij")
    directions = _unit(grid_theta, grid_phi)
    inside = np.zeros((height, width), bool)
    for spot_theta, spot_phi, radius in discs:
        inside |= np.degrees(np.arccos(np.clip(directions @ _unit(spot_theta, spot_phi), -1, 1))) <= radius
    weight = environment[..., 1] * np.cos(np.radians(grid_theta)) * np.sin(np.radians(grid_theta))
    return float(weight[inside].sum())


def test_low_sky_is_never_silently_in_range(caplog):
    # A uniform sky: half of the ground's irradiance comes from theta in (45, 90) -> ambient 1/2 (sin^2 45).
    found = lights_from_environment(_environment(floor=1.0), max_lights=2)
    assert found.ambient == pytest.approx(0.5, abs=0.02)
    assert all(light.theta <= 45 and light.size == 8.0 for light in found.lights)  # a wide sky: soft lights
    # A low sun (theta 70) and a little overhead sky: the sun goes to ambient with a warning ...
    environment = _environment(spots=[(70.0, 90.0, 3.0, 100.0), (10.0, 0.0, 20.0, 0.5)])
    with caplog.at_level("WARNING"):
        folded = lights_from_environment(environment, max_lights=2)
    assert "into `ambient`" in caplog.text and folded.ambient > 0.5
    assert all(light.theta <= 25 for light in folded.lights)
    # ... or, clamped, it becomes a light at theta 45 in its own direction, with a warning too.
    caplog.clear()
    with caplog.at_level("WARNING"):
        clamped = lights_from_environment(environment, max_lights=2, low_sky="clamp")
    assert "moved up to 45 degrees" in caplog.text
    assert clamped.lights[0].theta == pytest.approx(45.0, abs=0.1)
    assert clamped.lights[0].phi == pytest.approx(90.0, abs=2)
    with pytest.raises(ValueError, match="low_sky='clamp'"):
        lights_from_environment(_environment(spots=[(70.0, 90.0, 3.0, 100.0)]))
    with pytest.raises(ValueError, match="black above the horizon"):
        lights_from_environment(_environment(spots=[(120.0, 0.0, 10.0, 5.0)]))
    with pytest.raises(ValueError, match="`low_sky` must be one of ambient, clamp"):
        lights_from_environment(_environment(floor=1.0), low_sky="drop")


def test_environment_inputs_and_the_pipeline(lit_pipeline, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        lights_from_environment(tmp_path / "missing.hdr")
    hdr = tmp_path / "sky.hdr"
    hdr.write_bytes(b"#?RADIANCE\n")
    if importlib.util.find_spec("cv2") is None and importlib.util.find_spec("imageio") is None:
        with pytest.raises(ValueError, match="opencv-python-headless"):
            lights_from_environment(hdr)
    with pytest.raises(ValueError, match="finite linear radiance"):
        lights_from_environment(-_environment(floor=1.0))
    found = lights_from_environment(_environment(spots=[(30.0, 60.0, 4.0, 50.0), (20, 200, 10, 5)]), max_lights=2)
    out = lit_pipeline(_cutout(), lights=found.lights, ambient=found.ambient, output_type="np")
    assert out.shadow_maps.shape == (1, 48, 64)


# ----- the command line ------------------------------------------------------------------------------------------


def test_generate_shadows_with_several_lights_and_an_environment(tiny_shadow_dir, tmp_path, capsys):
    import generate_shadows

    cutout = tmp_path / "vase.png"
    _cutout().save(cutout)
    base = ["--model", str(tiny_shadow_dir), "--input", str(cutout)]
    output = tmp_path / "lights"
    code = generate_shadows.main(
        [*base, "--light", "30,0,2", "--light", "20,150,6,0.5", "--save_light_maps", "--output_dir", str(output)]
    )
    assert code == 0
    record = json.loads((output / "vase_lights.json").read_text())
    assert record["lights"][1] == {"theta": 20.0, "phi": 150.0, "size": 6.0, "power": 0.5} and record["ambient"] == 0
    for name in ("shadow", "layer", "composite", "light0_shadow", "light1_shadow"):
        assert PIL.Image.open(output / f"vase_lights_{name}.png").size == (64, 48)

    sky = tmp_path / "sky.png"
    environment = _environment(spots=[(30.0, 60.0, 4.0, 50.0)], floor=0.05)
    PIL.Image.fromarray((np.clip(environment, 0, 1) * 255).astype(np.uint8)).save(sky)
    output = tmp_path / "env"
    assert (
        generate_shadows.main([*base, "--environment", str(sky), "--max_lights", "2", "--output_dir", str(output)]) == 0
    )
    record = json.loads((output / "vase_env_sky.json").read_text())
    assert record["environment"] == str(sky) and 0 < record["ambient"] < 1 and 1 <= len(record["lights"]) <= 2
    assert (output / "vase_env_sky_composite.png").is_file()

    for extra, message in [
        (["--light", "30,0,2", "--phi", "90"], "use one or the other"),
        (["--light", "30,0,2", "--environment", str(sky)], "not both"),
        (["--light", "30,0"], "THETA,PHI,SIZE[,POWER]"),
        (["--save_light_maps"], "add one of them"),
    ]:
        with pytest.raises(SystemExit):
            generate_shadows.parse_args([*base, "--output_dir", str(tmp_path / "x"), *extra])
        assert message in capsys.readouterr().err, extra


def _light_set_folder(root, num_samples=2):
    """A folder in the renderer's --light_sets layout, written by its own OutputLayout (no Blender needed)."""
    import render_shadow_dataset as rsd

    layout = rsd.OutputLayout(root, "custom")
    rng = np.random.default_rng(0)
    lights = [[30.0, 0.0, 2.0, 1.0], [20.0, 150.0, 6.0, 0.5]]
    for index in range(num_samples):
        key = f"lights_{index:05d}_00"
        mask = np.zeros((48, 64), bool)
        mask[10:30, 20:40] = True
        object_rgb = np.repeat(np.where(mask[..., None], 120, 255), 3, axis=2).astype(np.uint8)
        singles = [np.clip(rng.random((48, 64)) * 0.3, 0, 1) * ~mask for _ in lights]
        combined = np.clip(0.6 * singles[0] + 0.3 * singles[1], 0, 1)
        metadata = {
            "lights": [dict(zip(("theta", "phi", "size", "power"), light)) for light in lights],
            "light_shadows": [f"light_shadows/{key}_{i}.png" for i in range(len(lights))],
        }
        layout.write(key, object_rgb, mask, combined, metadata, 16, singles)
    layout.finalize(tar=False)
    return root


def test_evaluate_light_sets_scores_composed_and_single_maps(tiny_shadow_dir, tmp_path):
    import evaluate_shadow

    folder = _light_set_folder(tmp_path / "light_sets")
    payload = evaluate_shadow.main(
        ["--model", str(tiny_shadow_dir), "--light_sets_dir", str(folder), "--num_seeds", "2",
         "--output_dir", str(tmp_path / "eval")]
    )  # fmt: skip
    summary = payload["summary"]
    assert summary["num_samples"] == 2 and summary["num_seeds"] == 2 and len(payload["records"]) == 4
    for group in ("composed", "single"):
        assert set(summary[group]) == {"iou", "rmse", "s_rmse", "zncc"}
        assert 0 <= summary[group]["rmse"]["mean"] <= 1
    assert len(payload["records"][0]["light_rmse"]) == 2 and "light_direction_error_deg" in payload["records"][0]
    assert summary["oracle_composition_rmse"]["mean"] >= 0
    report = (tmp_path / "eval" / "light_sets.md").read_text()
    assert "composed (all lights)" in report and "each light alone (same objects)" in report
    assert json.loads((tmp_path / "eval" / "light_sets.json").read_text())["summary"]["num_samples"] == 2
    with pytest.raises(ValueError, match="not a --light_sets rendering"):
        (folder / "metadata.json").write_text(json.dumps({"x": {"theta": 30}}))
        evaluate_shadow.load_light_set_samples(folder)
