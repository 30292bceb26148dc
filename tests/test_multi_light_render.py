"""Several lights in the renderer: the physics of composing single-light maps, checked on real Cycles renders.

Runs render_shadow_dataset.py with a Python that has `bpy` (see tests/test_render_shadow_dataset.py); skipped without.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from test_render_shadow_dataset import _box_geometry, render_python, run_renderer, write_obj  # noqa: F401

import render_shadow_dataset as rsd
from pipeline_shadow import (
    Light,
    area_light_irradiance,
    compose_light_maps,
    estimate_object_height,
    irradiance_fractions,
    light_coefficients,
)

LIGHT_SETS = ["30,0,2,1;20,150,6,0.5", "40,0,2;40,180,2;10,90,8,2"]  # theta,phi,size,relative power; ';' = together


def _plan_args(**overrides):
    args = rsd.parse_args(["--output_dir", "/tmp/unused-light-sets", "--light_sets", *LIGHT_SETS])
    for name, value in overrides.items():
        setattr(args, name, value)
    return args


def test_light_sets_plan_and_cli(tmp_path, capsys):
    args = _plan_args()
    specs = rsd.plan_samples(args, rsd.object_sources(args))
    assert [s.key for s in specs] == ["lights_00000_00", "lights_00000_01"]
    assert specs[0].lights == [[30.0, 0.0, 2.0, 1.0], [20.0, 150.0, 6.0, 0.5]]
    assert specs[1].light_list()[1] == [40.0, 180.0, 2.0, 1.0]  # power defaults to 1
    assert len({(s.rotation_z_deg, s.camera_distance) for s in specs}) == 1  # one pose and camera per object
    cases = [
        (["--light_sets", "30,0"], "THETA,PHI,SIZE[,POWER]"),
        (["--light_sets", "30,0,2;95,0,2"], "theta must be in"),
        (["--light_sets", "30,0,2,0"], "relative power must be > 0"),
        (["--light_sets", "30,0,2", "--lights", "30,0,2"], "exclusive"),
        (["--lights", "30,0,2", "--single_light_maps"], "add `--light_sets`"),
        (["--light_sets", "30,0,2", "--theta", "20"], "only applies to random lights"),
    ]
    for extra, message in cases:
        with pytest.raises(SystemExit):
            rsd.parse_args(["--output_dir", str(tmp_path / "out"), *extra])
        assert message in capsys.readouterr().err, (extra, message)


def test_pixel_ground_points_project_back_to_their_pixels():
    camera = rsd.camera_metadata(9.0, 10.0, rsd.CAMERA_AZIMUTH_DEG, (0.0, 0.0, 1.0), 32)
    points = rsd.pixel_ground_points(camera)
    hit = ~np.isnan(points[..., 0])
    assert hit[-1].all() and not hit[0].any()  # the bottom rows see the ground, the top rows the sky
    np.testing.assert_allclose(points[hit][:, 2], 0.0, atol=1e-9)
    uv = rsd.project_points(np.asarray(camera["projection_matrix"]), points[hit])
    rows, cols = np.nonzero(hit)
    np.testing.assert_allclose(uv, np.stack([cols + 0.5, rows + 0.5], axis=1), atol=1e-6)


@pytest.fixture(scope="module")
def light_set_renders(render_python, tmp_path_factory):  # noqa: F811
    """A 0.5 x 0.5 x 1.2 box under two light sets (2 and 3 lights) with each light's own map, 64 px, 256 spp."""
    root = tmp_path_factory.mktemp("light_sets")
    (root / "meshes").mkdir()
    write_obj(root / "meshes" / "box.obj", [_box_geometry(0.5, 0.5, 1.2)])
    run_renderer(
        render_python,
        *("--output_dir", root / "out", "--meshes", root / "meshes", "--light_sets", *LIGHT_SETS),
        *("--single_light_maps", "--resolution", 64, "--spp", 256, "--workers", 1, "--threads", 2, "--seed", 1),
    )
    out = root / "out"
    samples = []
    for key, metadata in sorted(json.loads((out / "metadata.json").read_text()).items()):
        singles = np.stack([rsd.load_gray(out / path) for path in metadata["light_shadows"]])
        combined = rsd.load_gray(out / "shadows" / f"{key}.png")
        samples.append((combined, singles, rsd.load_gray(out / "masks" / f"{key}.png"), metadata))
    return samples


def _rmse(a, b) -> float:
    return float(np.sqrt(((a - b) ** 2).mean()))


def test_composing_true_single_light_maps_gives_the_true_multi_light_map(light_set_renders):
    """s = sum_i c_i s_i with c_i = E_i / sum_j E_j: exact per pixel (only Monte-Carlo noise remains), and close with
    the constant coefficients the pipeline uses (taken where each light's shadow falls). Measured (64 px, 256 spp,
    two scenes): pixel-exact 0.0024 / 0.0026 RMSE, shadow-centre 0.0068 / 0.0084, foot-only 0.0118 / 0.0198."""
    for combined, singles, mask, metadata in light_set_renders:
        lights = [Light(m["theta"], m["phi"], m["size"], m["power"]) for m in metadata["lights"]]
        assert "theta" not in metadata and len(singles) == len(lights)  # never mistaken for a single-light sample
        assert (combined[mask > 0] == 0).all() and combined.max() > 0.3

        points = rsd.pixel_ground_points(metadata["camera"])
        sky = np.isnan(points[..., 0])
        flat = np.nan_to_num(points).reshape(-1, 3)
        irradiance = np.stack([area_light_irradiance(flat, light).reshape(mask.shape) for light in lights])
        irradiance[:, sky | (irradiance.sum(0) <= 0)] = 1.0  # no shadow is cast there anyway
        exact = compose_light_maps(singles, irradiance_fractions(irradiance)) * (mask == 0)
        assert _rmse(exact, combined) < 0.006

        height = estimate_object_height(mask)
        assert height == pytest.approx(metadata["object"]["height"], rel=0.25)
        centre = compose_light_maps(singles, light_coefficients(lights, height)) * (mask == 0)
        foot = compose_light_maps(singles, light_coefficients(lights, 0.0)) * (mask == 0)
        assert _rmse(centre, combined) < 0.012
        assert _rmse(centre, combined) < 0.8 * _rmse(foot, combined)


def test_blender_ground_irradiance_is_area_light_irradiance(render_python, tmp_path):  # noqa: F811
    """Blender's unoccluded irradiance on a white ground (benchmarks/render_ground_irradiance.py, 64 px, 64 spp)
    against our formula: one scale for every size (power = total power), shape within 1 % (measured 0.04-0.4 % RMS)."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "render_ground_irradiance.py"
    subprocess.run(
        [render_python, str(script), "--output_dir", str(tmp_path)],
        check=True,
        capture_output=True,
        env=dict(os.environ, PYTHONPATH=""),
        timeout=600,
    )
    spec = importlib.util.spec_from_file_location("bench_multi_light", script.parent / "bench_multi_light.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.irradiance(tmp_path)
    assert result["blender_over_formula_scale"] == pytest.approx(1.0, abs=0.01)
    for name, light in result["lights"].items():
        assert light["scale_ratio"] == pytest.approx(1.0, abs=0.005), name
        assert light["shape_error_rms"] < 0.01, name
        assert light["far_field_error_rms"] > 0.2, name  # the far-field constant is not E over the ground
