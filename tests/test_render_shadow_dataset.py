"""render_shadow_dataset.py: the pure geometry, the plan, and (where Blender is installed) real Cycles renders.

Rendering runs the script as its own program with a Python that has `bpy` (SHADOW_RENDER_PYTHON, this Python, or
.venv-render/bin/python), because bpy pins numpy<2 and lives in its own environment. Renders are tiny (32-128 px, a
few samples per pixel) and shared between tests through module-scoped fixtures.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import render_shadow_dataset as rsd

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "render_shadow_dataset.py"


# --------------------------------------------------------------------------------------------------------------------
# Test meshes, written by hand (no Blender needed): OBJ and glTF are Y-up, PLY is Z-up (each format's convention).
# --------------------------------------------------------------------------------------------------------------------


def _box_geometry(sx: float, sy: float, height: float, z0: float = 0.0):
    """Z-up box vertices and outward quads."""
    vertices = [(x, y, z) for z in (z0, z0 + height) for y in (-sy / 2, sy / 2) for x in (-sx / 2, sx / 2)]
    faces = [(0, 2, 3, 1), (4, 5, 7, 6), (0, 1, 5, 4), (2, 6, 7, 3), (0, 4, 6, 2), (1, 3, 7, 5)]
    return vertices, faces


def _cylinder_geometry(radius: float, height: float, segments: int = 16):
    ring = [
        (radius * math.cos(2 * math.pi * k / segments), radius * math.sin(2 * math.pi * k / segments))
        for k in range(segments)
    ]
    vertices = [(x, y, z) for z in (0.0, height) for x, y in ring]
    faces = [(k, (k + 1) % segments, segments + (k + 1) % segments, segments + k) for k in range(segments)]
    faces += [tuple(reversed(range(segments))), tuple(range(segments, 2 * segments))]
    return vertices, faces


def write_obj(path: Path, parts) -> Path:
    """Z-up parts [(vertices, faces)] -> an OBJ (Y-up: (x, y, z) -> (x, z, -y)), one `o` per part."""
    lines, offset = [], 1
    for i, (vertices, faces) in enumerate(parts):
        lines.append(f"o part{i}")
        lines += [f"v {x:.6f} {z:.6f} {-y:.6f}" for x, y, z in vertices]
        lines += ["f " + " ".join(str(offset + index) for index in face) for face in faces]
        offset += len(vertices)
    path.write_text("\n".join(lines) + "\n")
    return path


def write_ply(path: Path, vertices, faces, color=(200, 40, 40)) -> Path:
    """ASCII PLY with vertex colours (Z-up)."""
    header = [
        "ply",
        "format ascii 1.0",
        f"element vertex {len(vertices)}",
        "property float x",
        "property float y",
        "property float z",
        "property uchar red",
        "property uchar green",
        "property uchar blue",
        f"element face {len(faces)}",
        "property list uchar int vertex_indices",
        "end_header",
    ]
    body = [f"{x} {y} {z} {color[0]} {color[1]} {color[2]}" for x, y, z in vertices]
    body += [f"{len(face)} " + " ".join(map(str, face)) for face in faces]
    path.write_text("\n".join(header + body) + "\n")
    return path


def write_gltf(path: Path, vertices, faces) -> Path:
    """A one-mesh glTF 2.0 with an embedded buffer (Y-up: (x, y, z) -> (x, z, -y)), triangulated."""
    positions = np.array([(x, z, -y) for x, y, z in vertices], dtype=np.float32)
    triangles = np.array(
        [(face[0], face[i], face[i + 1]) for face in faces for i in range(1, len(face) - 1)], dtype=np.uint16
    )
    blob = positions.tobytes() + triangles.tobytes()
    gltf = {
        "asset": {"version": "2.0"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0}, "indices": 1, "material": 0}]}],
        "materials": [{"pbrMetallicRoughness": {"baseColorFactor": [0.2, 0.4, 0.9, 1.0], "roughnessFactor": 0.6}}],
        "buffers": [
            {"byteLength": len(blob), "uri": "data:application/octet-stream;base64," + base64.b64encode(blob).decode()}
        ],
        "bufferViews": [
            {"buffer": 0, "byteOffset": 0, "byteLength": positions.nbytes},
            {"buffer": 0, "byteOffset": positions.nbytes, "byteLength": triangles.nbytes},
        ],
        "accessors": [
            {
                "bufferView": 0,
                "componentType": 5126,
                "count": len(positions),
                "type": "VEC3",
                "min": positions.min(axis=0).tolist(),
                "max": positions.max(axis=0).tolist(),
            },
            {"bufferView": 1, "componentType": 5123, "count": triangles.size, "type": "SCALAR"},
        ],
    }
    path.write_text(json.dumps(gltf))
    return path


# --------------------------------------------------------------------------------------------------------------------
# Running the renderer.
# --------------------------------------------------------------------------------------------------------------------


def _find_render_python() -> str | None:
    explicit = os.environ.get("SHADOW_RENDER_PYTHON")
    if explicit:
        return explicit
    if importlib.util.find_spec("bpy") is not None:
        return sys.executable
    local = REPO_ROOT / ".venv-render" / "bin" / "python"
    return str(local) if local.exists() else None


@pytest.fixture(scope="module")
def render_python() -> str:
    python = _find_render_python()
    if python is None:
        pytest.skip(
            "Blender's `bpy` is not installed: `python3.11 -m venv .venv-render && .venv-render/bin/pip install -r "
            "requirements-render.txt` (or set SHADOW_RENDER_PYTHON to a Python that has bpy)."
        )
    return python


def run_renderer(python: str, *args, expect_ok: bool = True) -> subprocess.CompletedProcess:
    command = [python, str(SCRIPT), *map(str, args), "--log_level", "WARNING"]
    env = dict(os.environ, PYTHONPATH="")  # the render environment's own packages only
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=REPO_ROOT)
    if expect_ok and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def read_sample(root: Path, key: str):
    """(object uint8 HxWx3, mask float HxW, shadow float HxW, metadata) of a custom-layout sample."""
    object_rgb = np.asarray(Image.open(root / "objects" / f"{key}.png"))
    mask = rsd.load_gray(root / "masks" / f"{key}.png")
    shadow = rsd.load_gray(root / "shadows" / f"{key}.png")
    metadata = json.loads((root / "metadata.json").read_text())[key]
    return object_rgb, mask, shadow, metadata


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every data file under `root` (bookkeeping in .render/ left out) by relative path."""
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and ".render" not in path.relative_to(root).parts
    }


# --------------------------------------------------------------------------------------------------------------------
# Pure geometry (no Blender).
# --------------------------------------------------------------------------------------------------------------------


def test_light_position_follows_design_convention():
    np.testing.assert_allclose(rsd.light_position(0, 123), [0, 0, 8], atol=1e-12)
    np.testing.assert_allclose(rsd.light_position(90, 0), [8, 0, 0], atol=1e-12)
    np.testing.assert_allclose(rsd.light_position(90, 90), [0, 8, 0], atol=1e-12)
    np.testing.assert_allclose(rsd.light_position(30, 370), rsd.light_position(30, 10), atol=1e-12)  # phi is periodic
    for theta, phi in ((0, 0), (30, 45), (45, 300)):
        matrix = rsd.light_matrix_world(theta, phi)
        np.testing.assert_allclose(matrix[:3, :3].T @ matrix[:3, :3], np.eye(3), atol=1e-12)
        # Blender's area light emits along its local -Z: it must point at the origin.
        np.testing.assert_allclose(-matrix[:3, 2], -matrix[:3, 3] / np.linalg.norm(matrix[:3, 3]), atol=1e-12)
        corners = rsd.light_corners(theta, phi, 2.0)
        np.testing.assert_allclose(np.linalg.norm(corners[0] - corners[1]), 2.0)


def test_camera_projection_conventions():
    resolution, target = 64, (0.0, 0.0, 1.0)
    camera = rsd.camera_metadata(9.0, 20.0, rsd.CAMERA_AZIMUTH_DEG, target, resolution)
    location = np.array(camera["location"])
    assert location[1] < 0 and location[2] > target[2]  # on the -y side, raised
    np.testing.assert_allclose(np.linalg.norm(location - target), 9.0)
    np.testing.assert_allclose(camera["intrinsics"][0][0], 50.0 / 36.0 * resolution)
    projection = np.array(camera["projection_matrix"])
    centre, right, up = rsd.project_points(projection, [target, (0.5, 0, 1), (0, 0, 1.5)])
    np.testing.assert_allclose(centre, [resolution / 2, resolution / 2], atol=1e-9)  # aimed at the target
    assert right[0] > centre[0] and abs(right[1] - centre[1]) < 1e-9  # +x is the image's right
    assert up[1] < centre[1]  # +z is up (v counts rows from the top)
    # Blender's camera (looks along local -Z, +Y up) is the same camera.
    blender = rsd.blender_camera_matrix_world(location, target)
    rotation = np.array(camera["world_to_camera"])[:, :3]
    np.testing.assert_allclose(blender[:3, 2], -rotation[2])
    np.testing.assert_allclose(blender[:3, 1], -rotation[1])
    with pytest.raises(ValueError, match="straight along z"):
        rsd.look_at_world_to_camera((0, 0, 5), (0, 0, 0))


def test_pole_shadow_tip_formula():
    np.testing.assert_allclose(rsd.pole_shadow_tip(2.0, 0.0, 77.0), [0, 0, 0], atol=1e-12)
    tip = rsd.pole_shadow_tip(2.0, 45.0, 0.0)  # the shadow falls away from the light: -x for phi = 0
    expected = 2.0 * 8.0 * math.sin(math.radians(45)) / (8.0 * math.cos(math.radians(45)) - 2.0)
    np.testing.assert_allclose(tip, [-expected, 0.0, 0.0], atol=1e-12)
    # Same answer as intersecting the ray light -> pole top with the ground.
    light, top = rsd.light_position(35.0, 200.0), np.array([0.0, 0.0, 1.5])
    ground = light + light[2] / (light[2] - top[2]) * (top - light)
    np.testing.assert_allclose(rsd.pole_shadow_tip(1.5, 35.0, 200.0), ground, atol=1e-12)
    with pytest.raises(ValueError, match="above the pole top"):
        rsd.pole_shadow_tip(8.0, 10.0, 0.0)


def test_placement_matrix_rescales_centres_and_rests_on_ground():
    rng = np.random.default_rng(0)
    vertices = rng.normal(size=(200, 3)) * [3.0, 1.0, 0.5] + [5.0, -2.0, 7.0]
    matrix = rsd.placement_matrix(vertices, 30.0)
    placed = vertices @ matrix[:3, :3].T + matrix[:3, 3]
    low, high = placed.min(axis=0), placed.max(axis=0)
    np.testing.assert_allclose((high - low).max(), rsd.OBJECT_LARGEST_SIDE)
    np.testing.assert_allclose([(low[0] + high[0]) / 2, (low[1] + high[1]) / 2, low[2]], [0, 0, 0], atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(matrix[:3, :3]) ** (1 / 3), np.linalg.norm(matrix[:3, 0]))  # no shear
    with pytest.raises(ValueError, match="no extent"):
        rsd.placement_matrix(np.zeros((4, 3)), 0.0)


def test_shadow_region_bounds_the_shadow():
    camera = rsd.camera_metadata(8.0, 20.0, rsd.CAMERA_AZIMUTH_DEG, (0, 0, 1), 128)
    projection = np.array(camera["projection_matrix"])
    low, high = np.array([-0.05, -0.05, 0.0]), np.array([0.05, 0.05, 2.0])
    for theta, phi, size in ((30, 0, 2), (40, 120, 8), (0, 0, 4)):
        rect = rsd.shadow_region(low, high, theta, phi, size, projection, 128)
        tip = rsd.project_points(projection, rsd.pole_shadow_tip(2.0, theta, phi))[0]
        assert rect[0] <= tip[0] <= rect[2] and rect[1] <= tip[1] <= rect[3]
        assert rsd.grow_rect(rect, 500, 128) == (0, 0, 128, 128)
    assert rsd.shadow_region(low, high, 80, 0, 8, projection, 128) is None  # light not above the box: whole frame


def test_procedural_recipes_are_deterministic_valid_and_diverse():
    families, shapes, patterns = set(), set(), set()
    for k in range(60):
        recipe = rsd.procedural_recipe(rsd.sample_rng(0, 1, k))
        assert recipe == rsd.procedural_recipe(rsd.sample_rng(0, 1, k))
        json.dumps(recipe)  # stored in the metadata
        vertices, faces, materials, smooth = rsd.recipe_mesh(recipe)
        assert np.isfinite(vertices).all() and len(faces) == len(materials) == len(smooth)
        assert min(min(face) for face in faces) >= 0 and max(max(face) for face in faces) < len(vertices)
        assert all(len(set(face)) == len(face) >= 3 for face in faces)
        assert max(materials) < len(recipe["materials"])
        assert vertices[:, 2].min() > -1e-9  # built on the ground
        families.add(recipe["family"])
        shapes.update(part["shape"] for part in recipe["parts"])
        patterns.update(material["pattern"] for material in recipe["materials"])
    assert families == set(rsd.DEFAULT_FAMILIES)
    assert shapes == set(rsd.SOLID_PRIMITIVES)
    assert patterns == {"plain", "checker", "noise"}


# --------------------------------------------------------------------------------------------------------------------
# Object families: the classic generator unchanged, and the thin-structure families' shapes, seen as silhouettes.
# --------------------------------------------------------------------------------------------------------------------


def test_default_families_draw_the_original_objects():
    """Seed 0's first 100 objects, as the generator drew them before families existed (the shipped model's data)."""
    recipes = [rsd.object_recipe(0, k) for k in range(100)]
    digest = hashlib.sha256(json.dumps(recipes, sort_keys=True).encode()).hexdigest()[:16]
    assert digest == "c8310c76804b78cf"
    assert {recipe["family"] for recipe in recipes} == set(rsd.CLASSIC_FAMILIES)


def test_families_are_checked_and_drawn_only_from_the_selection():
    assert rsd.check_families(None) == rsd.DEFAULT_FAMILIES
    assert rsd.check_families(["ring", "pole"]) == ("pole", "ring")  # FAMILIES order, whatever the order given
    assert rsd.check_families(rsd.FAMILIES, exclude=rsd.THIN_FAMILIES + rsd.EXTRA_THIN_FAMILIES) == rsd.CLASSIC_FAMILIES
    # a training set for the family-held-out split: everything but the five test families
    assert rsd.check_families(None, exclude=rsd.THIN_FAMILIES) == rsd.CLASSIC_FAMILIES + rsd.EXTRA_THIN_FAMILIES
    with pytest.raises(ValueError, match="Unknown object family 'chairs'.*allowed: single"):
        rsd.check_families(["chairs"])
    with pytest.raises(ValueError, match="No object family left"):
        rsd.check_families(["pole"], exclude=["pole"])
    drawn = {rsd.object_family(7, k, ("legged", "slats")) for k in range(40)}
    assert drawn == {"legged", "slats"}
    for k in range(10):  # the plan's cheap draw and the worker's recipe agree
        assert rsd.object_recipe(7, k, ("legged", "slats"))["family"] == rsd.object_family(7, k, ("legged", "slats"))
    args = _plan_args(num_objects=12, families=["ring", "bridge"])
    specs = rsd.plan_samples(args, rsd.object_sources(args))
    assert {spec.family for spec in specs} == {"ring", "bridge"}
    assert [s.family for s in specs] == [s.family for s in rsd.plan_samples(args, rsd.object_sources(args))]


def _signed_volume(vertices: np.ndarray, faces) -> float:
    triangles = np.array([(face[0], face[i], face[i + 1]) for face in faces for i in range(1, len(face) - 1)])
    a, b, c = vertices[triangles[:, 0]], vertices[triangles[:, 1]], vertices[triangles[:, 2]]
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


def silhouette(recipe: dict, view: str, pixels: int = 48, ground: bool = False):
    """The object seen along `view` ('top': down z, 'front': along y, 'side': along x) with parallel rays:
    (occupancy [rows, cols] bool, row 0 = the low end of the vertical axis, pixel size). `ground` adds an occupied row
    under the object in the front and side views (the floor closes the gap under a span)."""
    vertices, faces, _, _ = rsd.recipe_mesh(recipe)
    axes = {"top": (0, 1), "front": (0, 2), "side": (1, 2)}[view]
    points = vertices[:, axes]
    low, high = points.min(axis=0), points.max(axis=0)
    pixel = float((high - low).max()) / (pixels - 2)
    shape = np.ceil((high - low) / pixel).astype(int) + 2  # (cols, rows) with a one-pixel margin
    origin = low - pixel
    occupancy = np.zeros((shape[1], shape[0]), dtype=bool)
    for face in faces:  # each triangle fills the pixel centres inside it, looked for only within its bounding box
        for a, b, c in ((points[face[0]], points[face[i]], points[face[i + 1]]) for i in range(1, len(face) - 1)):
            area = (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
            if abs(area) < 1e-12:  # seen edge-on: covers nothing
                continue
            first = np.floor((np.minimum(np.minimum(a, b), c) - origin) / pixel).astype(int)
            last = np.ceil((np.maximum(np.maximum(a, b), c) - origin) / pixel).astype(int)
            cols, rows = np.meshgrid(np.arange(first[0], last[0]), np.arange(first[1], last[1]))
            x, y = origin[0] + (cols + 0.5) * pixel, origin[1] + (rows + 0.5) * pixel
            w0 = ((b[0] - x) * (c[1] - y) - (b[1] - y) * (c[0] - x)) * np.sign(area)
            w1 = ((c[0] - x) * (a[1] - y) - (c[1] - y) * (a[0] - x)) * np.sign(area)
            inside = (w0 >= 0) & (w1 >= 0) & (abs(area) - w0 - w1 >= 0)
            occupancy[rows[inside], cols[inside]] = True
    if ground and view != "top":
        occupancy[0] = True  # the margin row just under z = 0
    return occupancy, pixel


def holes(occupancy: np.ndarray) -> int:
    """Empty regions not connected (4-neighbours) to the picture's border."""
    empty = ~occupancy
    seen = np.zeros_like(empty)
    count = 0
    for start in zip(*np.nonzero(empty)):
        if seen[start]:
            continue
        stack, border = [start], False
        seen[start] = True
        while stack:
            r, c = stack.pop()
            border |= r in (0, empty.shape[0] - 1) or c in (0, empty.shape[1] - 1)
            for rr, cc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
                if 0 <= rr < empty.shape[0] and 0 <= cc < empty.shape[1] and empty[rr, cc] and not seen[rr, cc]:
                    seen[rr, cc] = True
                    stack.append((rr, cc))
        count += not border
    return count


def runs(row: np.ndarray) -> list[int]:
    """Lengths of the occupied runs along a row of pixels."""
    edges = np.diff(np.concatenate([[0], row.astype(int), [0]]))
    return list(np.nonzero(edges == -1)[0] - np.nonzero(edges == 1)[0])


def _family_recipes(family: str, count: int = 12):
    return [rsd.object_recipe(11, k, (family,)) for k in range(count)]


def test_thin_families_are_valid_closed_meshes_on_the_ground():
    for family in rsd.THIN_FAMILIES + rsd.EXTRA_THIN_FAMILIES:
        kinds = set()
        for k, recipe in enumerate(_family_recipes(family, 30)):
            assert recipe == rsd.object_recipe(11, k, (family,))
            assert recipe["family"] == family
            json.dumps(recipe)
            vertices, faces, materials, smooth = rsd.recipe_mesh(recipe)
            assert np.isfinite(vertices).all() and len(faces) == len(materials) == len(smooth)
            assert all(len(set(face)) == len(face) >= 3 for face in faces)
            assert abs(vertices[:, 2].min()) < 1e-9  # resting on the ground
            for part in recipe["parts"]:  # every part closed with outward faces (Cycles' shading needs them)
                assert _signed_volume(*rsd.part_vertices(part)[:2]) > 0, (family, recipe["kind"], part["shape"])
            kinds.add(recipe["kind"].split("+")[0].rstrip("0123456789"))
        assert len(kinds) >= 3, (family, kinds)  # variety inside the family


def test_a_tube_is_round_and_a_closed_tube_has_no_seam():
    angles = np.linspace(0.0, 2 * np.pi, 60, endpoint=False)
    loop = np.stack([np.cos(angles), np.sin(angles), np.zeros(60)], axis=1)
    vertices, faces, _ = rsd.primitive_mesh({"shape": "tube", "dims": [0.1, 1.0, *loop.ravel()]})
    radial = np.linalg.norm(vertices[:, :2], axis=1)
    distance_to_path = np.hypot(radial - 1.0, vertices[:, 2])
    assert np.allclose(distance_to_path, 0.1, atol=2e-3)
    # a torus' volume, less what a 16-sided cross-section cuts off the circle
    assert _signed_volume(vertices, faces) == pytest.approx(2 * np.pi * np.pi * 0.01, rel=0.04)
    edges = [np.linalg.norm(vertices[face[1]] - vertices[face[0]]) for face in faces]
    assert max(edges) < 1.5 * min(edges)  # no twisted quad at the seam


def test_rings_have_a_hole_a_ray_through_the_centre_misses():
    for recipe in _family_recipes("ring", 10):
        assert any(holes(silhouette(recipe, view, pixels=40)[0]) for view in ("top", "front", "side")), recipe["kind"]
        if recipe["kind"] == "lying":  # the vertical ray through the ring's centre misses it
            occupancy, _ = silhouette(recipe, "top")
            assert not occupancy[occupancy.shape[0] // 2, occupancy.shape[1] // 2]


def test_legged_objects_stand_on_thin_legs():
    for recipe in _family_recipes("legged"):
        widest_leg = []
        for view in ("front", "side"):
            occupancy, pixel = silhouette(recipe, view, pixels=64)
            foot_row = occupancy[1 + max(1, int(0.05 * occupancy.shape[0]))]  # just above the ground
            legs = runs(foot_row)
            assert len(legs) >= 2, (recipe["kind"], view, legs)
            widest_leg.append(max(legs) * pixel / (max(occupancy.shape) * pixel))
            assert holes(silhouette(recipe, view, pixels=64, ground=True)[0]) >= 1  # light passes under the seat
        # seen from one side at least, no leg (nor two legs one behind the other) is wider than a tenth of the object
        assert min(widest_leg) <= 0.1, (recipe["kind"], widest_leg)
        occupancy, _ = silhouette(recipe, "top")
        assert occupancy[occupancy.shape[0] // 2, occupancy.shape[1] // 2]  # a seat or top over the middle


def test_poles_are_thin_and_tall():
    for recipe in _family_recipes("pole"):
        for view in ("front", "side"):
            occupancy, pixel = silhouette(recipe, view, pixels=96)
            height = occupancy.shape[0] * pixel
            middle = runs(occupancy[occupancy.shape[0] // 2])
            assert len(middle) == 1 and middle[0] * pixel <= 0.06 * height, (recipe["kind"], view, middle)


def test_slats_have_gaps_and_bridges_a_gap_under_the_span():
    for recipe in _family_recipes("slats"):
        gaps = max(holes(silhouette(recipe, view, pixels=64, ground=True)[0]) for view in ("top", "front", "side"))
        assert gaps >= 3, (recipe["kind"], gaps)
    for recipe in _family_recipes("bridge"):
        front, _ = silhouette(recipe, "front", pixels=64)
        assert holes(silhouette(recipe, "front", pixels=64, ground=True)[0]) >= 1, recipe["kind"]
        assert not front[2, front.shape[1] // 2]  # a horizontal ray under the crown, just above the ground, misses


def test_training_only_thin_families_have_rungs_stems_holes_and_limbs():
    """The families that train thin shapes for the family-held-out split (whose five families they must not copy)."""
    for family in ("ladder", "frame"):  # light passes between rungs, bars and beams
        for recipe in _family_recipes(family):
            gaps = max(holes(silhouette(recipe, view, pixels=64, ground=True)[0]) for view in ("top", "front", "side"))
            assert gaps >= 1, (family, recipe["kind"], gaps)
    stems = [r for r in _family_recipes("lathe", 40) if r["kind"] in ("goblet", "candlestick")]
    assert stems
    for recipe in stems:  # one round profile; somewhere along its height far narrower than its widest part
        occupancy, _ = silhouette(recipe, "front", pixels=96)
        widths = [sum(runs(row)) for row in occupancy if row.any()]
        assert min(widths) <= 0.3 * max(widths), (recipe["kind"], min(widths), max(widths))
        assert all(len(runs(row)) == 1 for row in occupancy if row.any())
    for recipe in _family_recipes("figure", 30):
        if recipe["kind"] == "tree":  # a trunk no wider than a tenth of the tree
            occupancy, pixel = silhouette(recipe, "front", pixels=64)
            assert max(runs(occupancy[2])) <= 0.1 * max(occupancy.shape), recipe["kind"]
            continue
        feet = [runs(silhouette(recipe, view, pixels=64)[0][2]) for view in ("front", "side")]
        assert max(len(row) for row in feet) >= 2, (recipe["kind"], feet)  # stands on two or four limbs


def _top_area(recipe: dict, parts: list[dict]) -> float:
    """The area the `parts` cover seen from above (pixels of 1/64 of their own extent)."""
    occupancy, pixel = silhouette(dict(recipe, parts=parts), "top", pixels=64)
    return float(occupancy.sum()) * pixel**2


def test_wire_glyph_shelf_and_sticks_are_thin_shapes_with_gaps_and_overhangs():
    """The sixth round's training families (the held-out split's five families not copied)."""
    for recipe in _family_recipes("wire", 16):  # one thin tube; light passes through its coils, bends or loop
        (part,) = recipe["parts"]
        extent = np.ptp(rsd.recipe_mesh(recipe)[0], axis=0)
        assert part["shape"] == "tube" and part["dims"][0] <= 0.05 * extent.max(), recipe["kind"]
        if recipe["kind"] in ("spiral", "zigzag"):  # gaps open to the edge, not holes: wires apart across the middle
            occupancy, _ = silhouette(recipe, "top" if recipe["kind"] == "spiral" else "front", pixels=96)
            assert len(runs(occupancy[occupancy.shape[0] // 2])) >= 3, recipe["kind"]
            continue
        gaps = max(holes(silhouette(recipe, view, pixels=64, ground=True)[0]) for view in ("top", "front", "side"))
        assert gaps >= 1, recipe["kind"]
    for recipe in _family_recipes("glyph", 24):
        lying = recipe["kind"].startswith("lying-")
        extent = np.ptp(rsd.recipe_mesh(recipe)[0], axis=0)
        assert (extent[2] < extent[1]) == lying, recipe["kind"]  # flat: thinner up than across; standing: the reverse
        if set(recipe["kind"]) & set("AOP"):  # a counter: a hole in the letter's own plane
            assert holes(silhouette(recipe, "top" if lying else "front", pixels=96)[0]) >= 1, recipe["kind"]
    overhangs = [r for r in _family_recipes("shelf", 24) if r["kind"] in ("cantilever", "canopy", "stairs")]
    assert overhangs
    for recipe in overhangs:  # seen from above, boards cover far more than the parts that stand on the ground do
        standing = [p for p in recipe["parts"] if rsd.part_vertices(p)[0][:, 2].min() < 1e-6]
        assert _top_area(recipe, recipe["parts"]) >= 1.3 * _top_area(recipe, standing), recipe["kind"]
    for recipe in _family_recipes("sticks", 12):  # thin rods (an easel may hold a board)
        extent = np.ptp(rsd.recipe_mesh(recipe)[0], axis=0).max()
        rods = [p for p in recipe["parts"] if p["shape"] == "cylinder"]
        assert len(rods) >= len(recipe["parts"]) - 1 and all(p["dims"][0] <= 0.05 * extent for p in rods)
        if recipe["kind"] != "pile":  # poles leaning on each other: light passes between them and the ground
            gaps = max(holes(silhouette(recipe, v, pixels=128, ground=True)[0]) for v in ("front", "side"))
            assert gaps >= 1, recipe["kind"]


def _openings(recipe: dict, pixels: int = 96) -> dict[str, int]:
    """Holes in the object's silhouette along each view, the ground closing the gaps under it."""
    return {view: holes(silhouette(recipe, view, pixels=pixels, ground=True)[0]) for view in ("top", "front", "side")}


def test_cart_tower_plant_and_panel_let_light_through_their_own_ways():
    """The eighth round's training families (none of them the held-out split's five): light passes under a cart's
    body and through its spokes, through a lattice's bays, between a plant's thin stems and blades, and through a
    panel's openings."""
    for recipe in _family_recipes("cart", 16):
        wheels = [p for p in recipe["parts"] if p["shape"] == "torus" or p.get("rotation_deg", [0])[0] == 90.0]
        discs = [p for p in recipe["parts"] if p["shape"] == "cylinder" and p["dims"][1] < p["dims"][0]]
        assert wheels or discs, recipe["kind"]  # a tyre ring standing up, or a solid wheel (a disc thinner than wide)
        assert max(_openings(recipe).values()) >= 1, recipe["kind"]
    for recipe in _family_recipes("tower", 16):
        openings = _openings(recipe)
        assert max(openings.values()) >= (10 if recipe["kind"] in ("mast", "pylon") else 1), (recipe["kind"], openings)
    for recipe in _family_recipes("plant", 16):
        extent = np.ptp(rsd.recipe_mesh(recipe)[0], axis=0).max()
        thickness = {"box": lambda dims: min(dims), "cylinder": lambda dims: 2 * dims[0], "tube": lambda d: 2 * d[0]}
        thin = [p for p in recipe["parts"] if thickness.get(p["shape"], max)(p["dims"]) <= 0.05 * extent]
        if recipe["kind"] == "cactus":  # a column with arms: wider seen from above than its trunk
            trunk = 2 * recipe["parts"][0]["dims"][0]
            assert np.ptp(rsd.recipe_mesh(recipe)[0][:, :2], axis=0).max() > 1.3 * trunk
        else:
            assert len(thin) >= 3, recipe["kind"]  # stems, blades, fronds
    for recipe in _family_recipes("panel", 24):
        openings = _openings(recipe)
        view = "top" if recipe["kind"] == "lying-frame" else "front"
        assert openings[view] >= (4 if recipe["kind"] == "perforated" else 1), (recipe["kind"], openings)


def test_euler_angles_of_a_rotation_give_it_back_also_pointing_straight_up():
    """A blade or a ribbon's strip is a box turned by a rotation matrix written as Euler angles; a strip standing
    straight up is the decomposition's singular case (its roll and yaw turn about the same axis)."""
    rng = np.random.default_rng(0)
    rotations = [rsd._random_rotation(rng) for _ in range(50)]
    for angle in np.linspace(0.0, 2 * np.pi, 9):
        for up in (1.0, -1.0):
            along, across = np.array([0.0, 0.0, up]), np.array([math.cos(angle), math.sin(angle), 0.0])
            rotations.append(np.stack([along, across, np.cross(along, across)], axis=1))
    for rotation in rotations:
        assert np.linalg.det(rotation) == pytest.approx(1.0)
        assert np.allclose(rsd.euler_matrix(rsd._euler_from_matrix(rotation)), rotation, atol=1e-9)


def test_spiky_fan_ribbon_and_scatter_cast_spikes_blades_bands_and_many_shadows():
    """The ninth round's training families (none of them the held-out split's five): spikes that fill little of what
    they span, blades with light between them, bands thin from above or twisting as they rise, and many separate
    small things on the ground."""

    def fill(recipe: dict, view: str) -> float:
        return float(silhouette(recipe, view, pixels=64)[0].mean())

    def thin_boxes(recipe: dict) -> int:
        return sum(p["shape"] == "box" and min(p["dims"]) <= 0.02 for p in recipe["parts"])

    for recipe in _family_recipes("spiky", 16):
        assert fill(recipe, "top") < 0.3, recipe["kind"]
        assert sum(p["shape"] in ("cone", "cylinder") for p in recipe["parts"]) >= 3, recipe["kind"]
    for recipe in _family_recipes("fan", 16):
        assert thin_boxes(recipe) >= 2, recipe["kind"]  # the blades
        if recipe["kind"] in ("propeller", "pinwheel"):  # lying: light between the blades, seen from above
            assert fill(recipe, "top") < 0.6, recipe["kind"]
    for recipe in _family_recipes("ribbon", 24):
        if recipe["kind"] in ("wave", "scroll"):  # a band on its edge: a thin line from above
            assert fill(recipe, "top") < 0.3, recipe["kind"]
        elif recipe["kind"] == "twist":  # full width face on, a sliver edge on
            widths = [int(row.sum()) for row in silhouette(recipe, "front", pixels=64)[0] if row.any()]
            assert max(widths) > 2 * min(widths), widths
        else:  # arching: the gap under the hump
            assert _openings(recipe)["front"] >= 1, recipe["kind"]
    for recipe in _family_recipes("scatter", 16):
        top = silhouette(recipe, "top", pixels=96)[0]
        assert holes(~top) >= 3, recipe["kind"]  # separate pieces (the picture's margin is empty)


def _plan_args(**overrides):
    values = dict(
        meshes=None,
        num_objects=None,
        num_samples=10,
        mode="random",
        seed=3,
        theta=None,
        phi=None,
        size=None,
        test_fraction=0.0,
        lights=None,
        tracks=None,
    )
    values.update(overrides)
    import argparse

    return argparse.Namespace(**values)


def test_plan_is_a_function_of_seed_and_index():
    args = _plan_args(num_objects=4)
    short, long = rsd.plan_samples(args, rsd.object_sources(args)), None
    args_long = _plan_args(num_objects=4, num_samples=20)
    long = rsd.plan_samples(args_long, rsd.object_sources(args_long))
    assert short == long[:10]  # more samples never change the first ones
    other_seed = _plan_args(num_objects=4, seed=4)
    assert rsd.plan_samples(other_seed, rsd.object_sources(other_seed)) != short
    for spec in long:
        assert 0 <= spec.theta <= 45 and 0 <= spec.phi <= 359 and 2 <= spec.size <= 8
        assert spec.theta == int(spec.theta) and spec.phi == int(spec.phi) and spec.size == int(spec.size)
        assert 7 <= spec.camera_distance <= 11 and 10 <= spec.camera_elevation_deg <= 30
        assert spec.camera_azimuth_deg == -90.0
    fixed = _plan_args(theta=30.0, size=0.5)
    assert {(s.theta, s.size) for s in rsd.plan_samples(fixed, rsd.object_sources(fixed))} == {(30.0, 0.5)}


def test_plan_splits_by_object_and_builds_tracks():
    from dataset_loading import detect_track

    args = _plan_args(num_samples=40, num_objects=10, test_fraction=0.3)
    specs = rsd.plan_samples(args, rsd.object_sources(args))
    train = {s.object_id for s in specs if s.split == "train"}
    test = {s.object_id for s in specs if s.split == "test"}
    assert len(test) == 3 and not train & test and len(train | test) == 10
    with pytest.raises(ValueError, match="leaves no training object"):
        rsd.test_objects(2, 0.9, 0)

    args = _plan_args(mode="tracks", tracks=list(rsd.TRACK_NAMES), num_samples=None, num_objects=2)
    specs = rsd.plan_samples(args, rsd.object_sources(args))
    assert len(specs) == 2 * 30 and [s.index for s in specs] == list(range(60))
    by_track = {name: [s for s in specs if s.track == name] for name in rsd.TRACK_NAMES}
    assert {len(v) for v in by_track.values()} == {6, 36, 18}
    assert {s.size for s in by_track["softness"]} == {2, 4, 8} and {s.theta for s in by_track["softness"]} == {30}
    assert {s.phi for s in by_track["horizontal"]} == set(range(0, 360, 20))
    assert {s.theta for s in by_track["vertical"]} == set(range(5, 50, 5))
    for spec in specs:
        assert detect_track(spec.key) == spec.track  # the key prefix names the track, as the benchmark's do
    same_object = [s for s in specs if s.object_index == 0]
    assert (
        len({(s.rotation_z_deg, s.camera_distance, s.camera_elevation_deg) for s in same_object}) == 1
    )  # only the light varies


def test_image_conversions():
    rgba = np.zeros((4, 4, 4), dtype=np.float32)
    rgba[1:3, 1:3] = [0.2, 0.4, 0.6, 1.0]
    rgba[0, 0] = [0.0, 0.0, 0.0, 0.4]  # soft edge below the threshold: outside the mask
    mask = rsd.mask_from_alpha(rgba[..., 3])
    assert mask.sum() == 4
    image = rsd.object_image_on_white(rgba, mask)
    assert (image[~mask] == 255).all() and (image[1, 1] == np.round(np.array([0.2, 0.4, 0.6]) * 255)).all()
    catcher = np.full((4, 4, 3), 1.0, dtype=np.float32)
    catcher[3, :] = 0.25
    catcher[0, 3] = 1.4  # noise above 1
    catcher[2, 0] = np.nan
    shadow = rsd.shadow_map_from_catcher(catcher, mask)
    assert shadow.dtype == np.float32 and shadow.min() >= 0 and shadow.max() <= 1
    np.testing.assert_allclose(shadow[3], 0.75)
    assert shadow[0, 3] == 0 and shadow[2, 0] == 0 and (shadow[mask] == 0).all()
    assert (rsd.shadow_map_from_catcher(catcher, mask, region=(0, 0, 2, 4))[3, 2:] == 0).all()
    for bits in rsd.SHADOW_BITS:
        decoded = np.asarray(rsd.shadow_to_image(shadow, bits), dtype=np.float32) / (2**bits - 1)
        np.testing.assert_allclose(decoded, shadow, atol=0.5 / (2**bits - 1) + 1e-7)


def test_cli_errors_name_the_argument(tmp_path, capsys):
    empty = tmp_path / "empty_meshes"
    empty.mkdir()
    (empty / "notes.txt").write_text("no meshes here")
    cases = [
        (["--meshes", str(empty), "--num_samples", "2"], "holds no mesh file"),
        (["--meshes", str(tmp_path / "missing"), "--num_samples", "2"], "does not exist (a folder of meshes, or one"),
        (["--meshes", str(empty / "notes.txt"), "--num_samples", "2"], "is not a mesh file; supported: .glb"),
        (["--num_samples", "2", "--resolution", "100"], "multiple of 8"),
        (["--lights", "30,0,2", "--tracks"], "exclusive"),
        (["--lights", "95,0,2"], "theta must be in"),
        (["--lights", "30,0"], "THETA,PHI,SIZE"),
        (["--tracks", "--num_samples", "3"], "only applies to random lights"),
        (["--num_samples", "2", "--tar"], "--format benchmark"),
        (["--num_samples", "2", "--format", "benchmark"], "needs `--tracks`"),
        (["--num_samples", "2", "--shard_index", "2", "--num_shards", "2"], "shard_index"),
        ([], "--num_samples"),
        (["--num_samples", "2", "--families", "chairs"], "invalid choice: 'chairs'"),
        (["--num_samples", "2", "--families", "pole", "--exclude_families", "pole"], "No object family left"),
        (["--meshes", str(empty), "--num_samples", "2", "--families", "pole"], "do not apply to `--meshes`"),
    ]
    for extra, message in cases:
        with pytest.raises(SystemExit):
            rsd.parse_args(["--output_dir", str(tmp_path / "out"), *extra])
        assert message in capsys.readouterr().err, (extra, message)
    # the classic families, named or not, are the same run (a folder rendered before families existed resumes)
    all_thin = [*rsd.THIN_FAMILIES, *rsd.EXTRA_THIN_FAMILIES]
    for extra in ([], ["--families", *rsd.CLASSIC_FAMILIES], ["--exclude_families", *all_thin]):
        assert rsd.parse_args(["--output_dir", str(tmp_path / "out"), "--num_samples", "2", *extra]).families is None
    args = rsd.parse_args(["--output_dir", str(tmp_path / "out"), "--num_samples", "2", "--exclude_families", "arch"])
    assert args.families == [f for f in rsd.FAMILIES if f != "arch"]
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(SystemExit):
        rsd.parse_args(["--output_dir", str(blocker / "out"), "--num_samples", "1"])
    assert "is not writable" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--num_samples", "2", "--phi", "nan"], "`--phi` must be a finite number, got nan"),
        (["--num_samples", "2", "--size", "nan"], "`--size` must be a finite number, got nan"),
        (["--num_samples", "2", "--ambient", "nan"], "`--ambient` must be a finite number, got nan"),
        (["--num_samples", "2", "--light_power", "inf"], "`--light_power` must be a finite number, got inf"),
        (["--lights", "30,nan,2"], "`--lights`: every THETA,PHI,SIZE[,POWER] must be a finite number"),
        (["--light_sets", "30,0,2;20,inf,4,0.5"], "`--light_sets`: every THETA,PHI,SIZE[,POWER] must be a finite"),
        (["--num_samples", "0"], "`--num_samples` must be >= 1, got 0"),
        (["--num_samples", "2", "--contact_sheet", "BLOCKER/sheet.png"], "is not a writable folder"),
        (["--num_samples", "2", "--contact_sheet", "sheet.txt"], "must name an image file to write"),
    ],
)
def test_non_finite_lights_no_samples_and_an_unwritable_contact_sheet_are_refused(tmp_path, capsys, extra, message):
    """NaN passes every range check (a NaN phi was rendered and recorded as such); --num_samples 0 recorded a
    0-object dataset that no later run could extend; a bad --contact_sheet failed only after the last render."""
    (tmp_path / "BLOCKER").write_text("")
    extra = [value.replace("BLOCKER", str(tmp_path / "BLOCKER")) for value in extra]
    with pytest.raises(SystemExit):
        rsd.parse_args(["--output_dir", str(tmp_path / "out"), *extra])
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / rsd.STATE_DIR / "config.json").exists()


def test_a_plan_that_cannot_be_made_fixes_no_settings_and_the_resume_hint_is_true(tmp_path, monkeypatch):
    monkeypatch.setattr(rsd, "_blender_available", lambda: False)
    out = str(tmp_path / "out")
    with pytest.raises(SystemExit, match="leaves no training object out of 1"):  # before config.json is written
        rsd.main(["--output_dir", out, "--num_samples", "1", "--test_fraction", "0.25", "--log_level", "ERROR"])
    assert not (tmp_path / "out" / rsd.STATE_DIR / "config.json").exists()
    with pytest.raises(SystemExit, match="requirements-render.txt"):  # the corrected command is not refused
        rsd.main(["--output_dir", out, "--num_samples", "2", "--log_level", "ERROR"])
    # procedural random samples without --num_objects draw one object each: "more --num_samples" needs the count
    with pytest.raises(SystemExit, match=r"objects: 2 there, 3 now.*to add samples here pass --num_objects 2"):
        rsd.main(["--output_dir", out, "--num_samples", "3", "--log_level", "ERROR"])
    with pytest.raises(SystemExit, match="requirements-render.txt"):  # ... and with it the folder is extended
        rsd.main(["--output_dir", out, "--num_samples", "3", "--num_objects", "2", "--log_level", "ERROR"])


def test_missing_blender_gives_install_hint(tmp_path, monkeypatch):
    monkeypatch.setattr(rsd, "_blender_available", lambda: False)
    with pytest.raises(SystemExit, match="requirements-render.txt"):
        rsd.main(["--output_dir", str(tmp_path / "out"), "--num_samples", "1", "--log_level", "ERROR"])


def test_resuming_with_other_settings_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(rsd, "_blender_available", lambda: False)
    out = str(tmp_path / "out")
    with pytest.raises(SystemExit):
        rsd.main(["--output_dir", out, "--num_samples", "1", "--num_objects", "1", "--log_level", "ERROR"])
    with pytest.raises(SystemExit, match="resolution: 256 there, 128 now"):
        rsd.main(
            [
                "--output_dir",
                out,
                "--num_samples",
                "5",
                "--num_objects",
                "1",
                "--resolution",
                "128",
                "--log_level",
                "ERROR",
            ]
        )


# --------------------------------------------------------------------------------------------------------------------
# Physics on real renders of a simple box (custom layout), and the exact geometry of a thin pole.
# --------------------------------------------------------------------------------------------------------------------

BOX_LIGHTS = {
    "phi0": (30, 0, 2),
    "phi180": (30, 180, 2),
    "theta10": (10, 0, 2),
    "theta40": (40, 0, 2),
    "theta0": (0, 0, 2),
    "size8": (30, 0, 8),
}


@pytest.fixture(scope="module")
def box_renders(render_python, tmp_path_factory):
    """{name: (object, mask, shadow, metadata)} for a 0.5 x 0.5 x 1.2 box under BOX_LIGHTS, 96 px, 16 spp."""
    root = tmp_path_factory.mktemp("box")
    (root / "meshes").mkdir()
    write_obj(root / "meshes" / "box.obj", [_box_geometry(0.5, 0.5, 1.2)])
    lights = [",".join(map(str, light)) for light in BOX_LIGHTS.values()]
    run_renderer(
        render_python,
        "--output_dir",
        root / "out",
        "--meshes",
        root / "meshes",
        "--lights",
        *lights,
        "--resolution",
        96,
        "--spp",
        16,
        "--workers",
        1,
        "--threads",
        2,
        "--seed",
        1,
    )
    return {name: read_sample(root / "out", f"light_00000_{j:02d}") for j, name in enumerate(BOX_LIGHTS)}


def _centroid_col(weights: np.ndarray) -> float:
    return float((weights.sum(axis=0) * (np.arange(weights.shape[1]) + 0.5)).sum() / weights.sum())


def test_mask_is_binary_shadow_zero_inside_and_object_on_white(box_renders):
    for name, (object_rgb, mask, shadow, metadata) in box_renders.items():
        assert set(np.unique(mask)) <= {0.0, 1.0}, name
        assert 0.02 < mask.mean() < 0.5, name
        assert (shadow[mask > 0] == 0).all(), name
        assert 0 <= shadow.min() and shadow.max() <= 1, name
        assert (object_rgb[mask == 0] == 255).all(), name
        assert (metadata["theta"], metadata["phi"], metadata["size"]) == BOX_LIGHTS[name]
        assert metadata["object"]["bbox_min"][2] == pytest.approx(0.0, abs=1e-6)
        assert max(np.subtract(metadata["object"]["bbox_max"], metadata["object"]["bbox_min"])) == pytest.approx(2.0)


def test_phi_puts_the_shadow_on_the_side_away_from_the_light(box_renders):
    _, mask, shadow, _ = box_renders["phi0"]
    assert _centroid_col(shadow) < _centroid_col(mask) - 5  # light on +x (image right): shadow to the left
    _, mask, shadow, _ = box_renders["phi180"]
    assert _centroid_col(shadow) > _centroid_col(mask) + 5


def test_larger_theta_lengthens_the_shadow(box_renders):
    def reach(name):  # how far left of the object the shadow extends (phi = 0)
        _, mask, shadow, _ = box_renders[name]
        return np.nonzero(mask.any(axis=0))[0].min() - np.nonzero((shadow > 0.5).any(axis=0))[0].min()

    assert reach("theta40") > reach("theta10") + 5
    assert box_renders["theta40"][2].sum() > 2 * box_renders["theta10"][2].sum()


def test_theta_zero_keeps_the_shadow_under_the_object(box_renders):
    _, mask, shadow, _ = box_renders["theta0"]
    columns = np.nonzero(mask.any(axis=0))[0]
    shadow_columns = np.nonzero((shadow > 0.2).any(axis=0))[0]
    # Only the penumbra of the 2-unit light (~0.3 units, ~5 px here) reaches past the box's sides.
    assert columns.min() - 6 <= shadow_columns.min() and shadow_columns.max() <= columns.max() + 6
    assert abs(_centroid_col(shadow) - _centroid_col(mask)) < 2
    assert shadow.sum() < 0.5 * box_renders["phi0"][2].sum()


def test_larger_light_widens_the_penumbra(box_renders):
    def penumbra(name):
        shadow = box_renders[name][2]
        return int(((shadow > 0.1) & (shadow < 0.9)).sum())

    assert penumbra("size8") > 1.5 * penumbra("phi0")  # ~2x (1.97-2.25 over four pose/camera seeds)
    assert box_renders["size8"][2].max() < box_renders["phi0"][2].max() + 1e-6


POLE_LIGHTS = [(30, 0, 0.05), (30, 200, 0.05), (40, 120, 0.05)]  # shadows beside or in front of the pole, not behind it


@pytest.fixture(scope="module")
def pole_renders(render_python, tmp_path_factory):
    root = tmp_path_factory.mktemp("pole")
    (root / "meshes").mkdir()
    write_obj(root / "meshes" / "pole.obj", [_cylinder_geometry(0.03, 2.0)])
    lights = [",".join(map(str, light)) for light in POLE_LIGHTS]
    run_renderer(
        render_python,
        "--output_dir",
        root / "out",
        "--meshes",
        root / "meshes",
        "--lights",
        *lights,
        "--resolution",
        128,
        "--spp",
        8,
        "--workers",
        1,
        "--threads",
        2,
    )
    return [read_sample(root / "out", f"light_00000_{j:02d}") for j in range(len(POLE_LIGHTS))]


def test_pole_shadow_tip_lands_where_geometry_says(pole_renders):
    """d = h·r·sinθ / (r·cosθ − h) in direction phi + 180°, projected through the camera in the metadata."""
    for _, _, shadow, metadata in pole_renders:
        height = metadata["object"]["height"]
        assert height == pytest.approx(2.0, abs=1e-4)
        projection = np.array(metadata["camera"]["projection_matrix"])
        tip = rsd.project_points(projection, rsd.pole_shadow_tip(height, metadata["theta"], metadata["phi"]))[0]
        foot = rsd.project_points(projection, [0.0, 0.0, 0.0])[0]
        rows, cols = np.nonzero(shadow > 0.3)
        pixels = np.stack([cols + 0.5, rows + 0.5], axis=1)
        direction = (tip - foot) / np.linalg.norm(tip - foot)
        farthest = pixels[np.argmax((pixels - foot) @ direction)]
        assert np.linalg.norm(tip - foot) > 20  # a long shadow, so the test means something
        assert np.linalg.norm(farthest - tip) < 2.0, (metadata["theta"], metadata["phi"], farthest, tip)


# --------------------------------------------------------------------------------------------------------------------
# Layouts, determinism, shards and resume (procedural objects); benchmark format; mesh formats and failures.
# --------------------------------------------------------------------------------------------------------------------

PROCEDURAL_ARGS = [
    "--num_samples",
    6,
    "--num_objects",
    6,
    "--test_fraction",
    0.34,
    "--resolution",
    64,
    "--spp",
    4,
    "--seed",
    5,
]


@pytest.fixture(scope="module")
def procedural_dataset(render_python, tmp_path_factory):
    """The same dataset twice: 2 workers x 1 thread at once, and as two shards of 1 worker x 2 threads."""
    root = tmp_path_factory.mktemp("procedural")
    run_renderer(render_python, "--output_dir", root / "full", *PROCEDURAL_ARGS, "--workers", 2, "--threads", 1)
    for shard in (0, 1):
        run_renderer(
            render_python,
            "--output_dir",
            root / "sharded",
            *PROCEDURAL_ARGS,
            "--num_shards",
            2,
            "--shard_index",
            shard,
            "--threads",
            2,
        )
    return root


def test_split_by_object_passes_verify_and_loads(procedural_dataset):
    import dataset_loading

    train_ids, test_ids = set(), set()
    for split, ids in (("train", train_ids), ("test", test_ids)):
        folder = procedural_dataset / "full" / split
        assert dataset_loading.main(["verify", str(folder)]) == 0
        metadata = json.loads((folder / "metadata.json").read_text())
        ids.update(entry["object_id"] for entry in metadata.values())
        assert all(entry["split"] == split for entry in metadata.values())
        loader, val_loader = dataset_loading.create_dataloaders(
            dataset_type="custom",
            data_dir=folder,
            batch_size=2,
            num_workers=0,
            image_size=64,
            val_fraction=0.0,
            shuffle=False,
        )
        assert val_loader is None
        batch = next(iter(loader))
        assert batch["object_image"].shape[1:] == (3, 64, 64) and batch["shadow_map"].shape[1:] == (1, 64, 64)
        for i, key in enumerate(batch["id"]):
            assert [batch[name][i].item() for name in ("theta", "phi", "size")] == [
                metadata[key][name] for name in ("theta", "phi", "size")
            ]
        assert ((batch["mask"] == 0) | (batch["mask"] == 1)).all()
        assert (batch["shadow_map"][batch["mask"] > 0] == 0).all()
    assert len(test_ids) == 2 and len(train_ids) == 4 and not train_ids & test_ids


def test_same_seed_same_bytes_whatever_workers_threads_or_shards(procedural_dataset):
    full, sharded = tree_bytes(procedural_dataset / "full"), tree_bytes(procedural_dataset / "sharded")
    assert len(full) == 3 * 6 + 2  # 6 samples x 3 PNGs over two splits, one metadata.json each
    assert full.keys() == sharded.keys()
    assert all(full[name] == sharded[name] for name in full)


def test_resume_skips_complete_samples_and_redoes_partial_ones(procedural_dataset, render_python):
    folder = procedural_dataset / "sharded"
    before = tree_bytes(folder)
    train = folder / "train"
    key = sorted(json.loads((train / "metadata.json").read_text()))[0]
    (train / ".render" / "samples" / f"{key}.json").unlink()  # the record goes last: without it the sample is partial
    (train / "shadows" / f"{key}.png").write_bytes(b"half a file")
    run_renderer(render_python, "--output_dir", folder, *PROCEDURAL_ARGS, "--threads", 2)
    summary = json.loads((folder / ".render" / "summary.json").read_text())
    assert summary["rendered"] == 1 and summary["already_complete"] == 5 and summary["failed"] == 0
    assert tree_bytes(folder) == before


def test_family_selection_renders_those_families_and_records_them(render_python, tmp_path):
    families = ("ring", "slats")
    run_renderer(render_python, "--output_dir", tmp_path, "--families", *families, "--num_objects", 4,
                 "--num_samples", 4, "--resolution", 48, "--spp", 2, "--threads", 2, "--seed", 3)  # fmt: skip
    assert json.loads((tmp_path / ".render" / "config.json").read_text())["families"] == list(families)
    for key, entry in json.loads((tmp_path / "metadata.json").read_text()).items():
        recipe = rsd.object_recipe(3, entry["object_index"], families)
        assert entry["family"] == recipe["family"] == rsd.object_family(3, entry["object_index"], families)
        assert entry["object"]["kind"] == recipe["kind"]
        assert read_sample(tmp_path, key)[1].sum() > 0  # the object is in the picture


def test_benchmark_tracks_load_as_the_benchmark(render_python, tmp_path):
    import dataset_loading
    from dataset_loading import detect_track

    out = tmp_path / "bench"
    run_renderer(
        render_python,
        "--output_dir",
        out,
        "--tracks",
        "--num_objects",
        1,
        "--format",
        "benchmark",
        "--tar",
        "--resolution",
        32,
        "--spp",
        2,
        "--workers",
        2,
        "--threads",
        1,
    )
    tar = out / "bench.tar"
    assert tar.is_file() and len(list(out.glob("*.shadow.png"))) == 30
    assert dataset_loading.main(["verify", str(tar)]) == 0
    loader, _ = dataset_loading.create_dataloaders(
        dataset_type="benchmark", data_dir=tar, batch_size=30, num_workers=0, image_size=32
    )
    batch = next(iter(loader))
    assert len(batch["id"]) == 30
    counts = {name: batch["track"].count(name) for name in rsd.TRACK_NAMES}
    assert counts == {"softness": 3, "horizontal": 18, "vertical": 9}
    for i, key in enumerate(batch["id"]):
        metadata = json.loads((out / f"{key}.metadata.json").read_text())
        assert detect_track(key, metadata) == metadata["track"] == batch["track"][i]
        assert (batch["theta"][i].item(), batch["phi"][i].item(), batch["size"][i].item()) == (
            metadata["theta"],
            metadata["phi"],
            metadata["size"],
        )


def test_one_mesh_file_is_a_dataset_of_one_object(tmp_path):
    (tmp_path / "scans").mkdir()
    mesh = tmp_path / "scans" / "my chair.obj"
    write_obj(mesh, [_box_geometry(0.6, 0.4, 1.0)])
    write_obj(tmp_path / "scans" / "other.obj", [_box_geometry(0.3, 0.3, 0.6)])  # beside it, not part of the run
    args = rsd.parse_args(["--output_dir", str(tmp_path / "out"), "--meshes", str(mesh), "--num_samples", "3"])
    (source,) = rsd.object_sources(args)
    assert (source.object_id, source.mesh_source, source.mesh_path) == ("my_chair", "my chair.obj", str(mesh.resolve()))


def test_mesh_formats_and_a_broken_mesh_is_skipped_and_counted(render_python, tmp_path):
    meshes = tmp_path / "meshes"
    (meshes / "nested").mkdir(parents=True)
    box = _box_geometry(0.6, 0.4, 1.0)
    write_obj(meshes / "two_parts.obj", [box, _box_geometry(0.3, 0.3, 0.6, z0=1.0)])  # two objects: joined
    write_ply(meshes / "nested" / "coloured.ply", *box)
    write_gltf(meshes / "blue.gltf", *box)
    (meshes / "broken.glb").write_bytes(b"this is not a glb file")
    out = tmp_path / "out"
    result = run_renderer(
        render_python,
        "--output_dir",
        out,
        "--meshes",
        meshes,
        "--num_samples",
        8,
        "--drop",
        "--resolution",
        32,
        "--spp",
        2,
        "--workers",
        1,
        "--threads",
        2,
    )
    summary = json.loads((out / ".render" / "summary.json").read_text())
    assert summary["rendered"] == 6 and summary["failed"] == 0
    assert list(summary["failed_meshes"]) == ["broken.glb"] and summary["failed_meshes"]["broken.glb"]["samples"] == 2
    assert "broken.glb" in result.stderr
    metadata = json.loads((out / "metadata.json").read_text())
    assert {entry["mesh_source"] for entry in metadata.values()} == {
        "blue.gltf",
        "nested/coloured.ply",
        "two_parts.obj",
    }
    for key, entry in metadata.items():
        assert entry["object"]["dropped"] and entry["object"]["bbox_min"][2] == pytest.approx(0.0, abs=1e-6)
        mask = rsd.load_gray(out / "masks" / f"{key}.png")
        assert mask.sum() > 10, key
    coloured = [k for k, e in metadata.items() if e["mesh_source"].endswith(".ply")][0]
    rgb = np.asarray(Image.open(out / "objects" / f"{coloured}.png"), dtype=np.float32)
    inside = rsd.load_gray(out / "masks" / f"{coloured}.png") > 0
    red, green = rgb[inside][:, 0].mean(), rgb[inside][:, 1].mean()
    assert red > green + 30  # the PLY's vertex colours are used


def test_a_mesh_without_faces_is_skipped_and_a_run_with_no_usable_mesh_fails(render_python, tmp_path):
    """Loose vertices render an empty mask and shadow: such a sample was written as a complete one. Now the mesh is
    skipped like an unreadable one, and a run whose every mesh was skipped exits 1 instead of leaving an empty
    dataset with exit status 0."""
    meshes = tmp_path / "meshes"
    meshes.mkdir()
    (meshes / "points.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\n")
    out = tmp_path / "out"
    result = run_renderer(render_python, "--output_dir", out, "--meshes", meshes, "--num_samples", 2, "--resolution",
                          32, "--spp", 1, "--workers", 1, "--threads", 1, expect_ok=False)  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "points.obj (2 samples): the file holds vertices or edges but no faces" in result.stderr
    assert "No sample was rendered: every mesh under --meshes" in result.stderr
    assert not list(out.rglob("masks/*.png"))  # no sample of it was written


def test_contact_sheet(tmp_path):
    root = tmp_path / "layout"
    layout = rsd.OutputLayout(root, "custom")
    rng = np.random.default_rng(0)
    for k in range(3):
        mask = np.zeros((32, 32), dtype=bool)
        mask[10:20, 12:18] = True
        shadow = np.where(mask, 0.0, rng.uniform(0, 1, size=(32, 32))).astype(np.float32)
        metadata = {"theta": 10.0 * k, "phi": 0.0, "size": 2.0, "object_id": "obj"}
        layout.write(f"{k:03d}", np.full((32, 32, 3), 200, dtype=np.uint8), mask, shadow, metadata, 16)
    layout.finalize(tar=False)
    path = rsd.make_contact_sheet([root], "custom", tmp_path / "sheet.png")
    with Image.open(path) as sheet:
        assert sheet.size == (72 + 3 * 32, 14 + 4 * 32)


def test_cage_playground_strung_and_tool_are_thin_bars_strings_and_slanted_handles():
    """The thirteenth round's training families (none of the held-out split's five): bars round an enclosure with light
    between them, play frames of pipes and ropes, frames strung with strings thinner than their frame, and long tool
    handles lying at a slant, never standing up as a pole does, their heads and supports on the ground."""

    def thin(part: dict) -> bool:  # a rod, a rope, a bent pipe or a hoop
        return {"cylinder": 0, "tube": 0, "torus": 1}.get(part["shape"]) is not None and min(part["dims"][:2]) <= 0.05

    for recipe in _family_recipes("cage", 16):
        openings = _openings(recipe)
        least = 1 if recipe["kind"] == "lantern" else 3  # four corner posts; bars all round
        assert max(openings["front"], openings["side"]) >= least, (recipe["kind"], openings)
        if recipe["kind"] == "birdcage":  # the dome's half-hoops cross the top along distinct diameters
            arcs = [np.reshape(p["dims"][2:], (-1, 3)) for p in recipe["parts"] if p["shape"] == "tube"]
            angles = [math.atan2(*(arc[0, 1::-1])) for arc in arcs]
            assert (
                len(arcs) >= 2
                and min(abs(math.sin(a - b)) for i, a in enumerate(angles) for b in angles[i + 1 :]) > 0.5
            ), angles
    for recipe in _family_recipes("playground", 16):
        assert sum(map(thin, recipe["parts"])) >= 4, recipe["kind"]
        assert max(_openings(recipe).values()) >= 1, recipe["kind"]
    for recipe in _family_recipes("strung", 24):
        strings = [p for p in recipe["parts"] if p["shape"] == "cylinder" and p["dims"][0] <= 0.015]
        frame = [p for p in recipe["parts"] if p not in strings]
        assert strings and frame, recipe["kind"]
        if recipe["kind"] != "bow":  # four or more strings side by side across x, light between each two
            across = np.sort([rsd.part_vertices(p)[0][:, 0].mean() for p in strings])
            assert len(strings) >= 4 and np.diff(across).min() > 2 * max(p["dims"][0] for p in strings), recipe["kind"]
    for recipe in _family_recipes("tool", 24):
        tool, support = recipe["kind"].split("+")
        handle = recipe["parts"][0]
        assert handle["shape"] == "cylinder" and handle["dims"][1] >= 1.0 and handle["dims"][0] <= 0.03
        assert handle["rotation_deg"][1] >= 30.0, recipe["kind"]  # at least 30 degrees off the vertical
        lowest = [float(rsd.part_vertices(p)[0][:, 2].min()) for p in recipe["parts"]]
        head_lowest = min(lowest[1:-1] if support != "lying" else lowest[1:])
        assert head_lowest < 0.02, recipe["kind"]  # the head on the ground
        if support != "lying":
            assert lowest[-1] < 0.02, recipe["kind"]  # and the crate or log it leans on
