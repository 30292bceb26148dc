"""Several lights: the irradiance math, the batched pipeline call and lights from an environment map."""

from __future__ import annotations

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
    estimate_object_height,
    irradiance_fractions,
    light_coefficients,
    light_weights,
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
    pil = lit_pipeline(images[0], lights=LIGHTS[:2], return_light_maps=True, output_type="pil")
    assert pil.shadow_maps[0].mode == "L" and len(pil.light_maps[0]) == 2
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
    with pytest.raises(ValueError, match="power` .* must be >= 0"):
        lit_pipeline(image, lights=[(30, 0, 2, -1.0)])
