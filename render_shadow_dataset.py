# Copyright 2026 The controllable-shadow-generation authors. Licensed under the Apache License, Version 2.0.
"""Renders a shadow-generation dataset with Blender Cycles: object image, mask and shadow map under a known light.

The paper's training data (257k Blender renders of 9.9k meshes) was never released. This script makes such data from
your own meshes (`--meshes DIR`) or from built-in procedural objects, in the project's local layout or in the public
benchmark's format, so that anyone can train and test without it.

    python render_shadow_dataset.py --output_dir data/train --num_samples 1000 --resolution 256 --workers 2
    python render_shadow_dataset.py --output_dir data/mine --meshes my_meshes/ --num_samples 5000 --test_fraction 0.02
    python render_shadow_dataset.py --output_dir data/bench --tracks --num_objects 15 --format benchmark --tar

Licensing: this script drives Blender (`bpy`, GPL-3.0-or-later) and is the only part of the project that does. Run it
as its own program, in its own environment (`requirements-render.txt`; bpy pins numpy<2): the rest of the project
never imports it, and only reads the images it writes. Without `bpy` the module still imports (its pure functions are
tested everywhere); rendering then stops with an install hint.

Conventions (docs/design.md §2 and §8; mirrored here, not imported, so that Blender's process does not load torch or
diffusers): z up, object at the origin resting on z = 0 with its largest bounding-box side 2.0 units; square area
light of side `size` on the sphere r = 8 at polar angle theta (from +z) and azimuth phi (from +x, counter-clockwise
seen from above), facing the origin; camera on the -y side aimed at the object's vertical centre, 7-11 units away,
10-30 degrees above the horizon, 50 mm lens on a 36 mm sensor, square image. So phi = 0 puts the light on the image's
right and the shadow on its left. Shadow map = 1 - E_with / E_without for the area light alone on the ground (Cycles'
shadow-catcher pass, ambient excluded), clamped to [0, 1], zero inside the mask.

Per sample, two Cycles renders: (1) the object alone, lit by the area light plus a uniform ambient (world) light, on a
transparent film, whose alpha gives the mask; (2) the ground as a shadow catcher with the object invisible to the
camera but casting shadows, only the area light on.

Several lights at once (`--light_sets "30,0,2,1;20,120,6,0.5"`: theta, phi, size and a relative power per light): the
object image is lit by all of them, the shadow map keeps the same definition, 1 - E_with / E_without of all the lights
together (the shadow catcher sums their irradiance), and `--single_light_maps` adds each light's own map (one more
shadow render per light) under light_shadows/<key>_<i>.png.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import hashlib
import importlib.util
import json
import logging
import math
import os
import shutil
import sys
import tarfile
import tempfile
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from dataclasses import replace as dataclass_replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

logger = logging.getLogger("render_shadow_dataset")

# --------------------------------------------------------------------------------------------------------------------
# 1. Conventions (docs/design.md §2, §4, §8). pipeline_shadow.py owns the shared ones; these mirror them.
# --------------------------------------------------------------------------------------------------------------------

LIGHT_DISTANCE = 8.0  # the light sphere's radius r
OBJECT_LARGEST_SIDE = 2.0  # largest side of the object's axis-aligned bounding box after rescaling
CAMERA_DISTANCE_RANGE = (7.0, 11.0)  # from the camera to the object's vertical centre
CAMERA_ELEVATION_RANGE_DEG = (10.0, 30.0)  # above the horizon
CAMERA_AZIMUTH_DEG = -90.0  # on the -y side, so that +x is the image's right
FOCAL_LENGTH_MM = 50.0
SENSOR_WIDTH_MM = 36.0
THETA_MAX_DEG = 90.0  # as pipeline_shadow.THETA_MAX_DEG: at 90 degrees the light is on the horizon
LIGHT_KEYS = ("theta", "phi", "size")  # as pipeline_shadow.LIGHT_KEYS

# The paper's integer grids, inclusive.
THETA_GRID_DEG = (0, 45)
PHI_GRID_DEG = (0, 359)
SIZE_GRID = (2, 8)

# The public benchmark's three track designs (docs/design.md §4): (theta, phi, size) per image of one mesh.
TRACK_NAMES = ("softness", "horizontal", "vertical")  # as dataset_loading.TRACK_NAMES
TRACK_LIGHTS = {
    "softness": [(30, 0, size) for size in (2, 4, 8)],
    "horizontal": [(35, phi, 2) for phi in range(0, 360, 20)],
    "vertical": [(theta, 0, 2) for theta in range(5, 50, 5)],
}
TRACK_KEY_PREFIX = {
    "softness": "soft",
    "horizontal": "horz",
    "vertical": "vert",
}  # what dataset_loading.detect_track reads

# What Blender imports headless (Blender 5.0; Collada and X3D were removed from it).
MESH_IMPORTERS = {
    ".glb": "import_scene.gltf",
    ".gltf": "import_scene.gltf",
    ".obj": "wm.obj_import",
    ".ply": "wm.ply_import",
    ".stl": "wm.stl_import",
    ".fbx": "import_scene.fbx",
    ".usd": "wm.usd_import",
    ".usda": "wm.usd_import",
    ".usdc": "wm.usd_import",
    ".usdz": "wm.usd_import",
    ".abc": "wm.alembic_import",
    ".blend": "append",
}

FORMATS = ("custom", "benchmark")
DEVICES = ("CPU", "CUDA", "OPTIX", "HIP", "ONEAPI", "METAL")
SHADOW_BITS = (8, 16)
DENOISE_BORDER_PX = 16  # rendered around the kept region when denoising
STATE_DIR = ".render"  # bookkeeping inside each output folder: config, per-sample records, summaries
PROCEDURAL_SOURCE = "procedural"

# RNG streams: every random draw is a function of (seed, stream, index), never of worker count or order.
_STREAM_SAMPLE, _STREAM_OBJECT, _STREAM_VIEW, _STREAM_SPLIT = 0, 1, 2, 3

# --------------------------------------------------------------------------------------------------------------------
# 2. Geometry: small pure functions (tested without Blender).
# --------------------------------------------------------------------------------------------------------------------


def light_position(theta_deg: float, phi_deg: float, distance: float = LIGHT_DISTANCE) -> np.ndarray:
    """The light's centre: r·(sinθ cosφ, sinθ sinφ, cosθ) (docs/design.md §2)."""
    theta, phi = math.radians(theta_deg), math.radians(phi_deg % 360.0)
    return distance * np.array([math.sin(theta) * math.cos(phi), math.sin(theta) * math.sin(phi), math.cos(theta)])


def light_matrix_world(theta_deg: float, phi_deg: float, distance: float = LIGHT_DISTANCE) -> np.ndarray:
    """4x4 object-to-world matrix of the area light: at `light_position`, its local -Z (Blender's emission direction)
    pointing at the origin, its square's local x along the azimuthal tangent (defined for theta = 0 too)."""
    position = light_position(theta_deg, phi_deg, distance)
    z_axis = position / np.linalg.norm(position)
    phi = math.radians(phi_deg % 360.0)
    x_axis = np.array([-math.sin(phi), math.cos(phi), 0.0])
    y_axis = np.cross(z_axis, x_axis)
    matrix = np.eye(4)
    matrix[:3, 0], matrix[:3, 1], matrix[:3, 2], matrix[:3, 3] = x_axis, y_axis, z_axis, position
    return matrix


def camera_location(distance: float, elevation_deg: float, azimuth_deg: float, target) -> np.ndarray:
    """Camera centre at `distance` from `target`, `elevation_deg` above the horizon, azimuth from +x (CCW from above)."""
    elevation, azimuth = math.radians(elevation_deg), math.radians(azimuth_deg)
    direction = np.array(
        [math.cos(elevation) * math.cos(azimuth), math.cos(elevation) * math.sin(azimuth), math.sin(elevation)]
    )
    return np.asarray(target, dtype=np.float64) + distance * direction


def look_at_world_to_camera(location, target) -> np.ndarray:
    """3x4 world-to-camera [R | t] in the OpenCV convention (x right, y down, z forward), world z up. The camera must
    not look straight up or down."""
    location, target = np.asarray(location, dtype=np.float64), np.asarray(target, dtype=np.float64)
    forward = target - location
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    if np.linalg.norm(right) < 1e-9:
        raise ValueError("The camera looks straight along z; its image orientation is undefined.")
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    rotation = np.stack([right, down, forward])
    return np.concatenate([rotation, (-rotation @ location)[:, None]], axis=1)


def camera_intrinsics(focal_mm: float, sensor_mm: float, width: int, height: int) -> np.ndarray:
    """3x3 K in pixels, principal point at the image centre. The sensor width spans the image width (Blender's
    'AUTO' sensor fit for width >= height). Pixel (col, row) covers [col, col+1) x [row, row+1)."""
    focal_px = focal_mm / sensor_mm * width
    return np.array([[focal_px, 0.0, width / 2.0], [0.0, focal_px, height / 2.0], [0.0, 0.0, 1.0]])


def projection_matrix(intrinsics: np.ndarray, world_to_camera: np.ndarray) -> np.ndarray:
    """3x4 P = K [R | t]: (u·w, v·w, w) = P (x, y, z, 1)."""
    return np.asarray(intrinsics) @ np.asarray(world_to_camera)


def project_points(projection: np.ndarray, points) -> np.ndarray:
    """World points [N,3] (or [3]) -> pixel coordinates [N,2] (u to the right, v DOWN from the image's top edge;
    pixel centres at +0.5)."""
    points = np.atleast_2d(np.asarray(points, dtype=np.float64))
    homogeneous = np.concatenate([points, np.ones((len(points), 1))], axis=1) @ np.asarray(projection).T
    return homogeneous[:, :2] / homogeneous[:, 2:3]


def blender_camera_matrix_world(location, target) -> np.ndarray:
    """4x4 object-to-world matrix of a Blender camera (looks along local -Z, local +Y up) at `location` aimed at
    `target`: the same camera as `look_at_world_to_camera`."""
    rotation = look_at_world_to_camera(location, target)[:, :3]
    matrix = np.eye(4)
    matrix[:3, 0], matrix[:3, 1], matrix[:3, 2] = rotation[0], -rotation[1], -rotation[2]
    matrix[:3, 3] = location
    return matrix


def pole_shadow_tip(height: float, theta_deg: float, phi_deg: float, distance: float = LIGHT_DISTANCE) -> np.ndarray:
    """Where the shadow of the top of a thin vertical pole (foot at the origin) lands on z = 0 under a point light at
    `light_position(theta, phi, distance)`: at d = h·r·sinθ / (r·cosθ − h) from the foot, in direction phi + 180°."""
    theta = math.radians(theta_deg)
    denominator = distance * math.cos(theta) - height
    if denominator <= 0:
        raise ValueError(
            f"The light (r·cos(theta) = {distance * math.cos(theta):.3g}) must be above the pole top ({height})."
        )
    length = height * distance * math.sin(theta) / denominator
    direction = math.radians(phi_deg + 180.0)
    return np.array([length * math.cos(direction), length * math.sin(direction), 0.0])


def placement_matrix(
    vertices: np.ndarray, rotation_z_deg: float, largest_side: float = OBJECT_LARGEST_SIDE
) -> np.ndarray:
    """4x4 world transform that rotates world-space `vertices` [N,3] about z, rescales them so that the largest side of
    their axis-aligned bounding box is `largest_side`, centres them on x = y = 0 and sets the lowest point on z = 0."""
    angle = math.radians(rotation_z_deg)
    rotation = np.array(
        [[math.cos(angle), -math.sin(angle), 0.0], [math.sin(angle), math.cos(angle), 0.0], [0.0, 0.0, 1.0]]
    )
    rotated = np.asarray(vertices, dtype=np.float64) @ rotation.T
    low, high = rotated.min(axis=0), rotated.max(axis=0)
    extent = float((high - low).max())
    if not np.isfinite(extent) or extent <= 0:
        raise ValueError(f"The object has no extent (bounding box {low.tolist()} .. {high.tolist()}).")
    scale = largest_side / extent
    matrix = np.eye(4)
    matrix[:3, :3] = scale * rotation
    matrix[:3, 3] = -scale * np.array([(low[0] + high[0]) / 2.0, (low[1] + high[1]) / 2.0, low[2]])
    return matrix


def light_corners(theta_deg: float, phi_deg: float, size: float, distance: float = LIGHT_DISTANCE) -> np.ndarray:
    """[4,3] world corners of the square area light."""
    matrix = light_matrix_world(theta_deg, phi_deg, distance)
    half = size / 2.0
    return np.array(
        [matrix[:3, 3] + sx * half * matrix[:3, 0] + sy * half * matrix[:3, 1] for sx in (-1, 1) for sy in (-1, 1)]
    )


def _box_corners(low, high) -> np.ndarray:
    return np.array([[x, y, z] for x in (low[0], high[0]) for y in (low[1], high[1]) for z in (low[2], high[2])])


def pixel_rect(projection: np.ndarray, points: np.ndarray, resolution: int, margin: int = 3):
    """(col0, row0, col1, row1), end-exclusive, of the pixels that `points` project into, grown by `margin` and clipped
    to the image; None when a point is behind the camera."""
    homogeneous = np.concatenate([points, np.ones((len(points), 1))], axis=1) @ np.asarray(projection).T
    if np.any(homogeneous[:, 2] <= 1e-6):
        return None
    uv = homogeneous[:, :2] / homogeneous[:, 2:3]
    col0, row0 = np.floor(uv.min(axis=0)).astype(int) - margin
    col1, row1 = np.ceil(uv.max(axis=0)).astype(int) + margin
    clip = lambda v: int(min(max(v, 0), resolution))  # noqa: E731
    return clip(col0), clip(row0), max(clip(col1), clip(col0)), max(clip(row1), clip(row0))


def union_rect(rects):
    """The smallest pixel rect holding every non-empty rect; None (the whole frame) when any is None."""
    if any(rect is None for rect in rects):
        return None
    kept = [rect for rect in rects if rect[2] > rect[0] and rect[3] > rect[1]]
    if not kept:
        return 0, 0, 0, 0
    return tuple(f(rect[k] for rect in kept) for k, f in ((0, min), (1, min), (2, max), (3, max)))


def grow_rect(rect, pad: int, resolution: int):
    """A pixel rect grown by `pad` on every side, clipped to the image (None stays None)."""
    if rect is None:
        return None
    return max(rect[0] - pad, 0), max(rect[1] - pad, 0), min(rect[2] + pad, resolution), min(rect[3] + pad, resolution)


def _convex_hull_2d(points: np.ndarray) -> np.ndarray:
    """Counter-clockwise convex hull of [N,2] points (Andrew's monotone chain)."""
    ordered = sorted(map(tuple, np.asarray(points, dtype=np.float64)))
    if len(ordered) <= 2:
        return np.array(ordered)

    def half(sequence):
        hull = []
        for point in sequence:
            while len(hull) >= 2 and np.cross(np.subtract(hull[-1], hull[-2]), np.subtract(point, hull[-2])) <= 0:
                hull.pop()
            hull.append(point)
        return hull[:-1]

    return np.array(half(ordered) + half(ordered[::-1]))


def _clip_polygon(polygon: np.ndarray, plane: np.ndarray, offset: float) -> np.ndarray:
    """The part of a convex 3D polygon [N,3] where plane · (x, y, z, 1) >= offset (Sutherland-Hodgman, one plane)."""
    kept = []
    for k in range(len(polygon)):
        current, following = polygon[k], polygon[(k + 1) % len(polygon)]
        a, b = plane[:3] @ current + plane[3] - offset, plane[:3] @ following + plane[3] - offset
        if a >= 0:
            kept.append(current)
        if (a >= 0) != (b >= 0):
            kept.append(current + a / (a - b) * (following - current))
    return np.array(kept).reshape(-1, 3)


def shadow_region(
    bbox_min, bbox_max, theta_deg: float, phi_deg: float, size: float, projection: np.ndarray, resolution: int
):
    """The pixels where the object's shadow (umbra and penumbra) can fall: the shadow of a convex set under a square
    light lies in the convex hull of the ground projections of (box corner, light corner) pairs; the part of that hull
    in front of the camera is projected. None (render the whole frame) when the light is not above the whole box."""
    corners, lights = _box_corners(bbox_min, bbox_max), light_corners(theta_deg, phi_deg, size)
    if lights[:, 2].min() <= corners[:, 2].max() + 1e-6:
        return None
    ground = np.array(
        [light + light[2] / (light[2] - corner[2]) * (corner - light) for light in lights for corner in corners]
    )
    hull = _convex_hull_2d(ground[:, :2])
    polygon = np.concatenate([hull, np.zeros((len(hull), 1))], axis=1)
    visible = _clip_polygon(polygon, np.asarray(projection)[2], offset=1e-3)  # projection row 3 = depth
    if len(visible) == 0:
        return 0, 0, 0, 0
    return pixel_rect(projection, visible, resolution)


def pixel_ground_points(camera: dict) -> np.ndarray:
    """[H,W,3] world point on the ground z = 0 seen through each pixel's centre of a sample's camera (its metadata),
    NaN where the pixel's ray does not hit the ground in front of the camera."""
    width, height = camera["resolution"]
    rows, cols = np.mgrid[0:height, 0:width] + 0.5
    pixels = np.stack([cols, rows, np.ones_like(cols)], axis=-1)  # (u, v, 1), pixel centres
    world_to_camera = np.asarray(camera["world_to_camera"])
    rays = pixels @ np.linalg.inv(np.asarray(camera["intrinsics"])).T @ world_to_camera[:, :3]  # R^T K^-1 (u, v, 1)
    location = np.asarray(camera["location"])
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = -location[2] / rays[..., 2]
    points = location + depth[..., None] * rays
    points[~(depth > 0)] = np.nan
    return points


def camera_metadata(distance, elevation_deg, azimuth_deg, target, resolution: int) -> dict:
    """Every camera parameter of a sample, and its projection (see `project_points` for the pixel convention)."""
    location = camera_location(distance, elevation_deg, azimuth_deg, target)
    world_to_camera = look_at_world_to_camera(location, target)
    intrinsics = camera_intrinsics(FOCAL_LENGTH_MM, SENSOR_WIDTH_MM, resolution, resolution)
    return {
        "distance": float(distance),
        "elevation_deg": float(elevation_deg),
        "azimuth_deg": float(azimuth_deg),
        "focal_length_mm": FOCAL_LENGTH_MM,
        "sensor_width_mm": SENSOR_WIDTH_MM,
        "resolution": [resolution, resolution],
        "location": location.tolist(),
        "look_at": [float(v) for v in target],
        "intrinsics": intrinsics.tolist(),
        "world_to_camera": world_to_camera.tolist(),
        "projection_matrix": projection_matrix(intrinsics, world_to_camera).tolist(),
        "pixel_convention": "OpenCV: (u*w, v*w, w) = P @ (x, y, z, 1); u right, v down from the top edge, "
        "pixel centres at +0.5; world z up",
    }


# --------------------------------------------------------------------------------------------------------------------
# 3. Procedural objects: a JSON recipe drawn from an RNG, turned into one mesh by pure numpy code.
# --------------------------------------------------------------------------------------------------------------------

SOLID_PRIMITIVES = ("box", "cylinder", "cone", "sphere", "torus", "prism")  # what the classic families draw from
PRIMITIVES = (*SOLID_PRIMITIVES, "tube")  # tubes are placed by the thin-structure families (knots)
_SEGMENTS = 32


def _ring(count: int, radius: float, z: float) -> np.ndarray:
    angles = 2.0 * np.pi * np.arange(count) / count
    return np.stack([radius * np.cos(angles), radius * np.sin(angles), np.full(count, z)], axis=1)


def _frustum(radius_bottom: float, radius_top: float, height: float, segments: int = _SEGMENTS):
    """Cylinder / cone / truncated cone, base on z = 0. Caps have their own vertices so that the smooth sides do not
    bend the caps' normals."""
    n = segments
    sides = np.concatenate([_ring(n, radius_bottom, 0.0), _ring(n, max(radius_top, 1e-4), height)])
    faces = [(k, (k + 1) % n, n + (k + 1) % n, n + k) for k in range(n)]
    smooth = [True] * n
    caps = [sides[:n].copy()]
    faces.append(tuple(range(2 * n, 3 * n))[::-1])  # bottom, facing down
    smooth.append(False)
    if radius_top > 1e-4:
        caps.append(sides[n:].copy())
        faces.append(tuple(range(3 * n, 4 * n)))
        smooth.append(False)
    return np.concatenate([sides, *caps]), faces, smooth


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def _tube(radius: float, path: np.ndarray, closed: bool, sides: int = _SEGMENTS // 2):
    """A round tube of `radius` swept along the polyline `path` [N,3] (a closed loop if `closed`, else capped at both
    ends). Frames are parallel-transported along the path, so the tube never twists; on a loop the leftover twist is
    spread evenly over it, so the seam closes."""
    n = len(path)
    if closed:
        tangents = _unit(np.roll(path, -1, axis=0) - np.roll(path, 1, axis=0))
    else:
        tangents = _unit(np.gradient(path, axis=0))
    helper = np.array([0.0, 0.0, 1.0]) if abs(tangents[0, 2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    normals = [_unit(np.cross(tangents[0], helper))]
    for tangent in tangents[1:]:
        previous = normals[-1]
        normals.append(_unit(previous - np.dot(previous, tangent) * tangent))
    normals = np.array(normals)
    if closed:  # rotate each frame by its share of the angle between the last frame carried round and the first
        carried = _unit(normals[-1] - np.dot(normals[-1], tangents[0]) * tangents[0])
        twist = math.atan2(np.dot(np.cross(carried, normals[0]), tangents[0]), np.dot(carried, normals[0]))
        shares = twist * np.arange(n) / n
        binormals = np.cross(tangents, normals)
        normals = np.cos(shares)[:, None] * normals + np.sin(shares)[:, None] * binormals
    binormals = np.cross(tangents, normals)
    angles = 2.0 * np.pi * np.arange(sides) / sides
    rings = path[:, None, :] + radius * (
        np.cos(angles)[None, :, None] * normals[:, None, :] + np.sin(angles)[None, :, None] * binormals[:, None, :]
    )
    vertices = rings.reshape(-1, 3)
    faces = []
    for i in range(n if closed else n - 1):
        a, b = i * sides, ((i + 1) % n) * sides
        faces.extend((a + j, a + (j + 1) % sides, b + (j + 1) % sides, b + j) for j in range(sides))
    smooth = [True] * len(faces)
    if not closed:  # flat caps with their own vertices, facing back along the path at the start, along it at the end
        vertices = np.concatenate([vertices, rings[0], rings[-1]])
        start = n * sides
        faces += [tuple(range(start, start + sides))[::-1], tuple(range(start + sides, start + 2 * sides))]
        smooth += [False, False]
    return vertices, faces, smooth


def primitive_mesh(part: dict):
    """(vertices [N,3], faces [list of index tuples], smooth [per face]) of one primitive, base on z = 0, centred on
    x = y = 0, before the part's rotation and offset."""
    shape, dims = part["shape"], part["dims"]
    if shape == "box":
        sx, sy, sz = dims
        vertices = np.array([[x, y, z] for z in (0.0, sz) for y in (-sy / 2, sy / 2) for x in (-sx / 2, sx / 2)])
        faces = [(0, 2, 3, 1), (4, 5, 7, 6), (0, 1, 5, 4), (2, 6, 7, 3), (0, 4, 6, 2), (1, 3, 7, 5)]
        return vertices, faces, [False] * 6
    if shape == "cylinder":
        radius, height = dims
        return _frustum(radius, radius, height)
    if shape == "cone":
        radius_bottom, radius_top, height = dims
        return _frustum(radius_bottom, radius_top, height)
    if shape == "sphere":  # an ellipsoid: radius, vertical stretch
        radius, stretch = dims
        rings, n = _SEGMENTS // 2, _SEGMENTS
        vertices = [[0.0, 0.0, 0.0]]
        for k in range(1, rings):
            polar = np.pi * (1.0 - k / rings)  # from the bottom pole up
            ring = _ring(n, radius * math.sin(polar), radius * stretch * (1.0 + math.cos(polar)))
            vertices.extend(ring.tolist())
        vertices.append([0.0, 0.0, 2.0 * radius * stretch])
        top = len(vertices) - 1
        faces = [(0, 1 + (j + 1) % n, 1 + j) for j in range(n)]
        for k in range(rings - 2):
            a, b = 1 + k * n, 1 + (k + 1) * n
            faces.extend((a + j, a + (j + 1) % n, b + (j + 1) % n, b + j) for j in range(n))
        last = 1 + (rings - 2) * n
        faces.extend((last + j, last + (j + 1) % n, top) for j in range(n))
        return np.array(vertices), faces, [True] * len(faces)
    if shape == "torus":  # major radius, minor radius; lying flat
        major, minor = dims
        n_major, n_minor = _SEGMENTS, _SEGMENTS // 2
        u = 2.0 * np.pi * np.arange(n_major) / n_major
        v = 2.0 * np.pi * np.arange(n_minor) / n_minor
        uu, vv = np.meshgrid(u, v, indexing="ij")
        radial = major + minor * np.cos(vv)
        vertices = np.stack([radial * np.cos(uu), radial * np.sin(uu), minor + minor * np.sin(vv)], axis=-1).reshape(
            -1, 3
        )
        faces = []
        for i in range(n_major):
            for j in range(n_minor):
                i2, j2 = (i + 1) % n_major, (j + 1) % n_minor
                faces.append((i * n_minor + j, i2 * n_minor + j, i2 * n_minor + j2, i * n_minor + j2))
        return vertices, faces, [True] * len(faces)
    if shape == "prism":  # an extruded star-shaped polygon: height, then its 2D outline (x0, y0, x1, y1, ...)
        height, *outline = dims
        polygon = np.asarray(outline, dtype=np.float64).reshape(-1, 2)
        n = len(polygon)
        bottom = np.concatenate([polygon, np.zeros((n, 1))], axis=1)
        top = np.concatenate([polygon, np.full((n, 1), height)], axis=1)
        vertices = np.concatenate([bottom, top])
        faces = [tuple(range(n))[::-1], tuple(range(n, 2 * n))]
        faces.extend((k, (k + 1) % n, n + (k + 1) % n, n + k) for k in range(n))
        return vertices, faces, [False] * len(faces)
    if shape == "tube":  # a round tube along a polyline: radius, closed (1) or open (0), then x0, y0, z0, x1, ...
        radius, closed, *path = dims
        return _tube(radius, np.asarray(path, dtype=np.float64).reshape(-1, 3), bool(closed))
    raise ValueError(f"Unknown primitive {shape!r}; allowed: {', '.join(PRIMITIVES)}.")


def euler_matrix(rotation_deg) -> np.ndarray:
    """XYZ Euler angles in degrees (Blender's default order) -> 3x3 rotation."""
    rx, ry, rz = (math.radians(a) for a in rotation_deg)
    mx = np.array([[1, 0, 0], [0, math.cos(rx), -math.sin(rx)], [0, math.sin(rx), math.cos(rx)]])
    my = np.array([[math.cos(ry), 0, math.sin(ry)], [0, 1, 0], [-math.sin(ry), 0, math.cos(ry)]])
    mz = np.array([[math.cos(rz), -math.sin(rz), 0], [math.sin(rz), math.cos(rz), 0], [0, 0, 1]])
    return mz @ my @ mx


def part_vertices(part: dict):
    """A recipe part's mesh in the object's frame: rotated about its base centre, then offset."""
    vertices, faces, smooth = primitive_mesh(part)
    vertices = vertices @ euler_matrix(part.get("rotation_deg", (0, 0, 0))).T + np.asarray(
        part.get("offset", (0, 0, 0))
    )
    return vertices, faces, smooth


def recipe_mesh(recipe: dict):
    """The whole procedural object as one mesh: (vertices [N,3], faces, material index per face, smooth per face)."""
    all_vertices, all_faces, materials, smooth_flags = [], [], [], []
    count = 0
    for part in recipe["parts"]:
        vertices, faces, smooth = part_vertices(part)
        all_vertices.append(vertices)
        all_faces.extend(tuple(index + count for index in face) for face in faces)
        materials.extend([part["material"]] * len(faces))
        smooth_flags.extend(smooth)
        count += len(vertices)
    return np.concatenate(all_vertices), all_faces, materials, smooth_flags


def _random_primitive(rng: np.random.Generator, shapes=SOLID_PRIMITIVES) -> dict:
    shape = str(rng.choice(shapes))
    if shape == "box":
        dims = rng.uniform(0.3, 1.5, size=3).tolist()
    elif shape == "cylinder":
        dims = [rng.uniform(0.15, 0.7), rng.uniform(0.3, 2.0)]
    elif shape == "cone":
        radius = rng.uniform(0.3, 0.8)
        dims = [radius, rng.choice([0.0, rng.uniform(0.1, 0.6) * radius]), rng.uniform(0.4, 1.8)]
    elif shape == "sphere":
        dims = [rng.uniform(0.25, 0.8), rng.uniform(0.6, 1.5)]
    elif shape == "torus":
        major = rng.uniform(0.4, 0.9)
        dims = [major, rng.uniform(0.12, 0.35) * major]
    else:
        count = int(rng.integers(3, 10))
        angles = np.sort(rng.uniform(0.0, 2.0 * np.pi, size=count))
        angles = (angles + np.linspace(0.0, 2.0 * np.pi, count, endpoint=False)) / 2.0  # keep vertices apart
        radii = rng.uniform(0.3, 0.9) * rng.uniform(0.5, 1.0, size=count)
        outline = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
        dims = [rng.uniform(0.2, 1.6), *outline.reshape(-1).tolist()]
    return {"shape": shape, "dims": [float(v) for v in dims]}


def _set_down(part: dict, base_z: float = 0.0, xy=(0.0, 0.0)) -> dict:
    """Offsets a part so that its lowest point is at `base_z` and its bounding-box centre at `xy`."""
    part = dict(part, offset=[0.0, 0.0, 0.0])
    vertices, _, _ = part_vertices(part)
    low, high = vertices.min(axis=0), vertices.max(axis=0)
    part["offset"] = [
        float(xy[0] - (low[0] + high[0]) / 2),
        float(xy[1] - (low[1] + high[1]) / 2),
        float(base_z - low[2]),
    ]
    return part


def _top(part: dict) -> float:
    return float(part_vertices(part)[0][:, 2].max())


def _random_material(rng: np.random.Generator) -> dict:
    hue, saturation, value = rng.uniform(0, 1), rng.uniform(0.0, 0.9), rng.uniform(0.25, 0.95)
    material = {
        "base_color": _hsv_to_rgb(hue, saturation, value),
        "roughness": float(rng.uniform(0.2, 0.9)),
        "metallic": float(rng.choice([0.0, 0.0, 0.0, 0.0, 0.8])),
        "pattern": str(rng.choice(["plain", "plain", "checker", "noise"])),
    }
    if material["pattern"] != "plain":
        material["color2"] = _hsv_to_rgb(
            (hue + rng.uniform(0.1, 0.5)) % 1.0, rng.uniform(0.0, 0.9), rng.uniform(0.2, 0.95)
        )
        material["pattern_scale"] = float(rng.uniform(2.0, 10.0))
    return material


def _hsv_to_rgb(hue: float, saturation: float, value: float) -> list[float]:
    k = (np.array([5.0, 3.0, 1.0]) + hue * 6.0) % 6.0
    return [float(c) for c in value - value * saturation * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)]


# weights (so that seed S still makes the very same objects); the five thin-structure families are the shapes whose
# shadows are not blobs: legs, poles, holes, slats and the gap under a span. docs/design.md §4.

CLASSIC_FAMILIES = ("single", "stack", "leaning", "cluster", "table", "arch")
THIN_FAMILIES = ("legged", "pole", "ring", "slats", "bridge")  # the family-held-out test split's families
# More thin structures, for TRAINING sets that hold the five above out: rungs, stems, wire frames, limbs, branches;
# then bent wire, block letters, overhanging boards and loose rods (added after the 7,600-render set was drawn); then
# wheeled bodies, braced lattices, plants and panels with openings (added after the fourteen-family set was drawn);
# then spikes, bladed rotors, thin bands and scattered small things (added after the eighteen-family sets were drawn);
# then cages, play frames, strung frames and long-handled tools (added after the twenty-two-family sets were drawn).
EXTRA_THIN_FAMILIES = (
    "ladder",
    "lathe",
    "frame",
    "figure",
    "wire",
    "glyph",
    "shelf",
    "sticks",
    "cart",
    "tower",
    "plant",
    "panel",
    "spiky",
    "fan",
    "ribbon",
    "scatter",
    "cage",
    "playground",
    "strung",
    "tool",
)
FAMILIES = CLASSIC_FAMILIES + THIN_FAMILIES + EXTRA_THIN_FAMILIES
DEFAULT_FAMILIES = CLASSIC_FAMILIES  # what a run without --families draws: the data the shipped model was trained on
FAMILY_WEIGHTS = {
    **dict(zip(CLASSIC_FAMILIES, (0.2, 0.2, 0.15, 0.15, 0.15, 0.15))),
    **dict.fromkeys(THIN_FAMILIES + EXTRA_THIN_FAMILIES, 0.15),
}
FAMILY_DESCRIPTIONS = {
    "single": "one primitive (box, cylinder, cone, ellipsoid, torus, extruded polygon)",
    "stack": "2-4 primitives stacked",
    "leaning": "a rod leaning on a block",
    "cluster": "2-4 primitives side by side",
    "table": "a top on four legs or a pedestal",
    "arch": "two pillars and a lintel",
    "legged": "chairs, stools and tables on thin legs",
    "pole": "a thin vertical pole (lamp post, sign, stand), with or without a base and a top",
    "ring": "holes: standing and lying rings, torus knots, linked rings, a hoop on a stand",
    "slats": "parallel thin bars with gaps: fences, combs, grilles, slatted benches",
    "bridge": "a curved span with a gap under it: arches on piers, footbridges, gates, arcades",
    "ladder": "rails and rungs: leaning ladders, step ladders, ladders lying flat, drying racks",
    "lathe": "turned profiles of revolution: vases, goblets and candlesticks on thin stems, bottles, balusters",
    "frame": "wire frames and lattices: cube and pyramid edges, trellises, pergolas with open roofs",
    "figure": "bodies on limbs: four-legged animals, standing people with arms out, bare branching trees",
    "wire": "bent wire: springs, coat hangers, flat and conical spirals, wavy closed loops, zigzags",
    "glyph": "block letters of thin strokes: one letter or a word of two or three standing up, a letter lying flat",
    "shelf": "boards with overhangs and compartments: bookcases, cubby grids, cantilevered desks, open stairs, canopies",
    "sticks": "loose thin rods: piles of pick-up sticks, teepees of poles, easels, sawbucks of crossed poles",
    "cart": "bodies on wheels: wagons, wheelbarrows, bicycles, hand trolleys (solid or spoked wheels)",
    "tower": "braced lattices: tapering masts, pylons with crossarms, scaffolding with a plank, tanks on braced legs",
    "plant": "plants: leafy stems in a pot, grass tufts, cacti with arms, palms with drooping fronds",
    "panel": "flat panels with openings: walls with windows, perforated partitions, folding screens, picture frames",
    "spiky": "spikes from a core: sea urchins, toy jacks, caltrops, starbursts",
    "fan": "blades round a hub: propellers and pinwheels lying flat, windmill rotors, desk fans",
    "ribbon": "thin bands: wavy bands on edge, twisting bands, scrolls, a band arching off the ground",
    "scatter": "many small separate things: pebbles, skittles in a triangle, strewn toy blocks",
    "cage": "bars round an enclosure: bird cages, flaring wire baskets, wire crates, lanterns",
    "playground": "play frames of pipes and ropes: swing sets, monkey bars, climbing domes, slides",
    "strung": "frames strung with thin strings: harps, lyres, strung bows, weaving frames leaning on a prop",
    "tool": "long-handled rakes, brooms, pitchforks and spades leaning on a crate, propped on a log or lying",
}


def check_families(families, exclude=()) -> tuple[str, ...]:
    """The selected families in FAMILIES order: `families` minus `exclude`. Without `families`: DEFAULT_FAMILIES, or
    every family when some are excluded (`--exclude_families` alone = all but those)."""
    chosen = tuple(families) if families is not None else (FAMILIES if exclude else DEFAULT_FAMILIES)
    unknown = sorted((set(chosen) | set(exclude)) - set(FAMILIES))
    if unknown:
        raise ValueError(f"Unknown object family {unknown[0]!r}; allowed: {', '.join(FAMILIES)}.")
    selected = tuple(name for name in FAMILIES if name in chosen and name not in exclude)
    if not selected:
        raise ValueError(f"No object family left: {', '.join(chosen)} minus {', '.join(exclude)}.")
    return selected


def draw_family(rng: np.random.Generator, families=DEFAULT_FAMILIES) -> str:
    """The object's family: the first draw from its RNG, weighted by FAMILY_WEIGHTS among `families`."""
    families = tuple(families)
    weights = np.array([FAMILY_WEIGHTS[name] for name in families])
    # The default keeps the original call bit for bit (same list, same p), hence no renormalisation there.
    p = weights if families == DEFAULT_FAMILIES else weights / weights.sum()
    return str(rng.choice(families, p=p))


def _horizontal(part: dict, azimuth_deg: float = 0.0) -> dict:
    """A part built along z laid along the x axis (then turned by `azimuth_deg` about z)."""
    return dict(part, rotation_deg=[0.0, 90.0, float(azimuth_deg)])


def _centred_at(part: dict, point) -> dict:
    """Offsets a part so that its bounding-box centre is at `point` (x, y, z)."""
    part = dict(part, offset=[0.0, 0.0, 0.0])
    vertices, _, _ = part_vertices(part)
    centre = (vertices.min(axis=0) + vertices.max(axis=0)) / 2
    part["offset"] = [float(v) for v in np.asarray(point, dtype=np.float64) - centre]
    return part


def _bar(shape: str, half_width: float, length: float) -> dict:
    """A thin box or cylinder `length` long along z."""
    if shape == "box":
        return {"shape": "box", "dims": [2 * half_width, 2 * half_width, length]}
    return {"shape": "cylinder", "dims": [half_width, length]}


def _legged_parts(rng: np.random.Generator) -> tuple[str, list[dict]]:
    kind = str(rng.choice(["chair", "stool", "table"]))
    leg_shape = str(rng.choice(["box", "cylinder"]))
    parts = []
    if kind == "stool":
        height, seat_radius = float(rng.uniform(0.5, 0.9)), float(rng.uniform(0.18, 0.3))
        leg_radius, splay = height * float(rng.uniform(0.015, 0.03)), float(rng.uniform(4.0, 12.0))
        thickness = float(rng.uniform(0.04, 0.08))
        parts.append(_set_down({"shape": "cylinder", "dims": [seat_radius, thickness]}, height - thickness))
        count, start = int(rng.integers(3, 5)), float(rng.uniform(0, 360))
        for k in range(count):
            azimuth = start + 360.0 * k / count
            outward = np.array([math.cos(math.radians(azimuth)), math.sin(math.radians(azimuth))])
            leg = _bar(leg_shape, leg_radius, (height - thickness) / math.cos(math.radians(splay)) + 0.02)
            leg["rotation_deg"] = [0.0, -splay, azimuth]  # the top leans in toward the seat's centre
            parts.append(_set_down(leg, 0.0, 0.75 * seat_radius * outward))
        if rng.uniform() < 0.5:  # a foot ring
            ring_radius = 0.75 * seat_radius + (height - thickness) * 0.35 * math.tan(math.radians(splay))
            parts.append(_set_down({"shape": "torus", "dims": [ring_radius, leg_radius * 0.8]}, 0.3 * height))
        return kind, parts
    if kind == "chair":
        seat_height, width, depth = (float(v) for v in rng.uniform([0.4, 0.4, 0.4], [0.6, 0.6, 0.6]))
        thickness, leg_radius = float(rng.uniform(0.03, 0.07)), float(rng.uniform(0.015, 0.035))
    else:
        seat_height, width, depth = (float(v) for v in rng.uniform([0.6, 1.0, 0.6], [1.0, 2.0, 1.2]))
        thickness, leg_radius = float(rng.uniform(0.03, 0.08)), float(rng.uniform(0.015, 0.04))
    parts.append(_set_down({"shape": "box", "dims": [width, depth, thickness]}, seat_height - thickness))
    corners = [(sx * (width / 2 - leg_radius), sy * (depth / 2 - leg_radius)) for sx in (1, -1) for sy in (1, -1)]
    for corner in corners:
        parts.append(_set_down(_bar(leg_shape, leg_radius, seat_height - thickness + 0.01), 0.0, corner))
    if rng.uniform() < 0.4:  # stretchers between the legs, low down
        z = float(rng.uniform(0.1, 0.3)) * seat_height
        for sy in (1, -1):
            rail = _horizontal(_bar(leg_shape, leg_radius * 0.7, width - 2 * leg_radius))
            parts.append(_set_down(rail, z, (0.0, sy * (depth / 2 - leg_radius))))
    if kind == "chair":
        back_height = float(rng.uniform(0.35, 0.7))
        back_y = -depth / 2 + leg_radius  # the back on the -y side; the object's z rotation turns it anyway
        style = str(rng.choice(["panel", "slats", "rails"]))
        for sx in (1, -1):  # two back posts, continuing the back legs
            parts.append(
                _set_down(_bar(leg_shape, leg_radius, back_height), seat_height - 0.01, (sx * corners[0][0], back_y))
            )
        top_rail = {"shape": "box", "dims": [width, 2 * leg_radius, float(rng.uniform(0.04, 0.12))]}
        parts.append(_set_down(top_rail, seat_height + back_height - top_rail["dims"][2], (0.0, back_y)))
        if style == "panel":
            panel = {"shape": "box", "dims": [width - 4 * leg_radius, 0.03, back_height * float(rng.uniform(0.3, 0.6))]}
            parts.append(_set_down(panel, seat_height + 0.3 * back_height, (0.0, back_y)))
        elif style == "slats":
            count = int(rng.integers(2, 6))
            for x in np.linspace(-width / 2, width / 2, count + 2)[1:-1]:
                parts.append(
                    _set_down(_bar("box", leg_radius * 0.8, back_height), seat_height - 0.01, (float(x), back_y))
                )
        else:
            for z in np.linspace(seat_height, seat_height + back_height, int(rng.integers(2, 4)) + 2)[1:-1]:
                rail = _horizontal(_bar(leg_shape, leg_radius * 0.8, width - 2 * leg_radius))
                parts.append(_set_down(rail, float(z), (0.0, back_y)))
    return kind, parts


def _pole_parts(rng: np.random.Generator) -> tuple[str, list[dict]]:
    height, radius = float(rng.uniform(1.5, 2.5)), float(rng.uniform(0.015, 0.05))
    base = str(rng.choice(["none", "disc", "block", "tripod"]))
    top = str(rng.choice(["none", "shade", "globe", "sign", "crossbar", "arm"]))
    parts, base_height = [], 0.0
    if base == "disc":
        base_height = float(rng.uniform(0.02, 0.08))
        parts.append(_set_down({"shape": "cylinder", "dims": [float(rng.uniform(0.15, 0.35)), base_height]}))
    elif base == "block":
        base_height = float(rng.uniform(0.05, 0.2))
        side = float(rng.uniform(0.15, 0.4))
        parts.append(_set_down({"shape": "box", "dims": [side, side, base_height]}))
    elif base == "tripod":
        reach, foot = float(rng.uniform(0.2, 0.4)), radius * 0.8
        for k in range(3):
            azimuth = 120.0 * k
            leg = _bar("cylinder", foot, math.hypot(reach, 0.3 * height))
            leg["rotation_deg"] = [0.0, -math.degrees(math.atan2(reach, 0.3 * height)), azimuth]
            direction = np.array([math.cos(math.radians(azimuth)), math.sin(math.radians(azimuth))])
            parts.append(_set_down(leg, 0.0, direction * reach / 2))
    parts.append(_set_down(_bar("cylinder", radius, height), base_height - 0.005))
    tip = base_height + height
    if top == "shade":  # a lamp shade, open side down
        shade_radius = float(rng.uniform(0.12, 0.3))
        shade = {"shape": "cone", "dims": [shade_radius, shade_radius * float(rng.uniform(0.2, 0.6)), shade_radius]}
        parts.append(_set_down(shade, tip - 0.5 * shade_radius))
    elif top == "globe":
        globe_radius = float(rng.uniform(0.08, 0.2))
        parts.append(_set_down({"shape": "sphere", "dims": [globe_radius, 1.0]}, tip - 0.02))
    elif top == "sign":
        sign = {"shape": "box", "dims": [float(rng.uniform(0.3, 0.7)), 0.03, float(rng.uniform(0.2, 0.5))]}
        parts.append(_set_down(sign, tip - sign["dims"][2] - 0.05))
    elif top == "crossbar":
        bar = _horizontal(_bar("cylinder", radius, float(rng.uniform(0.4, 1.0))))
        parts.append(_set_down(bar, tip - float(rng.uniform(0.05, 0.3)) - radius))
    elif top == "arm":  # a street lamp: an arm to one side, a small shade at its end
        reach = float(rng.uniform(0.3, 0.7))
        parts.append(_set_down(_horizontal(_bar("cylinder", radius * 0.8, reach)), tip - 2 * radius, (reach / 2, 0.0)))
        shade = {"shape": "cone", "dims": [0.12, 0.04, 0.1]}
        parts.append(_set_down(shade, tip - 0.12, (reach, 0.0)))
    return f"{base}+{top}", parts


def _torus_knot_path(p: int, q: int, major: float, minor: float, points: int = 96) -> np.ndarray:
    t = 2.0 * np.pi * np.arange(points) / points
    r = major + minor * np.cos(q * t)
    return np.stack([r * np.cos(p * t), r * np.sin(p * t), minor * np.sin(q * t)], axis=1)


def _ring_parts(rng: np.random.Generator) -> tuple[str, list[dict]]:
    kind = str(rng.choice(["standing", "lying", "knot", "linked", "hoop"]))
    major = float(rng.uniform(0.4, 0.9))
    minor = major * float(rng.uniform(0.08, 0.25))
    ring = {"shape": "torus", "dims": [major, minor]}
    if kind == "standing":
        return kind, [_set_down(dict(ring, rotation_deg=[90.0, 0.0, 0.0]))]
    if kind == "lying":
        return kind, [_set_down(ring)]
    if kind == "knot":
        p, q = (int(v) for v in [(2, 3), (3, 2), (2, 5), (3, 4)][int(rng.integers(4))])
        path = _torus_knot_path(p, q, major, major * float(rng.uniform(0.3, 0.5)))
        knot = {"shape": "tube", "dims": [major * float(rng.uniform(0.06, 0.12)), 1.0, *path.reshape(-1).tolist()]}
        if rng.uniform() < 0.5:
            knot["rotation_deg"] = [90.0, 0.0, 0.0]  # standing on its rim
        return f"knot{p}{q}", [_set_down(knot)]
    if kind == "linked":  # overlapping upright rings in a row, alternately raised and set a little back
        count, pitch = int(rng.integers(2, 5)), 2.0 * major * float(rng.uniform(0.75, 1.05))
        raise_by = major * float(rng.uniform(0.3, 0.8))
        parts = []
        for k in range(count):
            link = dict(ring, rotation_deg=[90.0, 0.0, 0.0])
            xy = ((k - (count - 1) / 2) * pitch, (k % 2) * 2.5 * minor)
            parts.append(_set_down(link, (k % 2) * raise_by, xy))
        return kind, parts
    stand_height = float(rng.uniform(0.2, 0.8))  # hoop: a ring held up on a post
    post = minor * 0.6
    parts = [
        _set_down({"shape": "cylinder", "dims": [float(rng.uniform(0.2, 0.4)), 0.04]}),
        _set_down(_bar("cylinder", post, stand_height + 0.05), 0.03),
        _set_down(dict(ring, rotation_deg=[90.0, 0.0, 0.0]), stand_height),
    ]
    return kind, parts


def _slats_parts(rng: np.random.Generator) -> tuple[str, list[dict]]:
    kind = str(rng.choice(["fence", "comb", "grille", "bench"]))
    length = float(rng.uniform(1.2, 2.0))
    count = int(rng.integers(5, 11)) if kind != "comb" else int(rng.integers(8, 17))
    pitch = length / count
    slat = pitch * float(rng.uniform(0.25, 0.55))  # the slat's width; the gap is the rest of the pitch
    xs = (np.arange(count) - (count - 1) / 2) * pitch
    parts = []
    if kind == "fence":
        height = float(rng.uniform(0.6, 1.2))
        for x in xs:
            parts.append(_set_down({"shape": "box", "dims": [slat, 0.04, height]}, 0.0, (float(x), 0.0)))
        for z in (0.25 * height, 0.7 * height):
            parts.append(_set_down({"shape": "box", "dims": [length, 0.05, 0.06]}, z, (0.0, 0.045)))
    elif kind == "comb":  # standing on its teeth under a spine
        tooth, spine = float(rng.uniform(0.4, 1.0)), float(rng.uniform(0.1, 0.3))
        for x in xs:
            parts.append(_set_down({"shape": "box", "dims": [slat, 0.05, tooth + 0.01]}, 0.0, (float(x), 0.0)))
        parts.append(_set_down({"shape": "box", "dims": [length, 0.06, spine]}, tooth))
    elif kind == "grille":  # a frame of bars standing upright on two feet
        height, lift = float(rng.uniform(0.6, 1.4)), float(rng.uniform(0.05, 0.3))
        frame = 0.05
        for x in (-length / 2, length / 2):
            parts.append(_set_down({"shape": "box", "dims": [frame, frame, height + lift]}, 0.0, (x, 0.0)))
            parts.append(_set_down({"shape": "box", "dims": [0.06, 0.4, 0.04]}, 0.0, (x, 0.0)))
        for z in (lift, lift + height - frame):
            parts.append(_set_down({"shape": "box", "dims": [length + frame, frame, frame]}, z))
        for x in xs:
            parts.append(_set_down(_bar("cylinder", slat / 2, height), lift, (float(x), 0.0)))
    else:  # bench: slats along x side by side in y, on two leg frames
        depth, height = float(rng.uniform(0.35, 0.6)), float(rng.uniform(0.35, 0.55))
        rows = int(rng.integers(4, 8))
        row_pitch = depth / rows
        for y in (np.arange(rows) - (rows - 1) / 2) * row_pitch:
            board = {"shape": "box", "dims": [length, row_pitch * float(rng.uniform(0.4, 0.7)), 0.04]}
            parts.append(_set_down(board, height - 0.04, (0.0, float(y))))
        for x in (-0.4 * length, 0.4 * length):  # a batten across under the boards, on two legs
            parts.append(_set_down({"shape": "box", "dims": [0.05, depth, 0.04]}, height - 0.075, (x, 0.0)))
            for y in (-depth / 2 + 0.03, depth / 2 - 0.03):
                parts.append(_set_down(_bar("box", 0.025, height - 0.07), 0.0, (x, y)))
    return kind, parts


def _arc_parts(radius: float, thickness: float, depth: float, spring_deg: float, centre, segments: int) -> list[dict]:
    """A curved span: `segments` boxes (voussoirs) along the arc of `radius` about `centre` (x, z) in the xz plane,
    from `spring_deg` to 180 - `spring_deg`."""
    angles = np.radians(np.linspace(spring_deg, 180.0 - spring_deg, segments + 1))
    parts = []
    for a0, a1 in zip(angles[:-1], angles[1:]):
        middle = (a0 + a1) / 2
        length = 2 * (radius + thickness / 2) * math.sin((a1 - a0) / 2) * 1.08  # a little overlap closes the joints
        stone = {
            "shape": "box",
            "dims": [length, depth, thickness],
            "rotation_deg": [0.0, -math.degrees(middle) + 90.0, 0.0],
        }
        point = (centre[0] + radius * math.cos(middle), 0.0, centre[1] + radius * math.sin(middle))
        parts.append(_centred_at(stone, point))
    return parts


def _bridge_parts(rng: np.random.Generator) -> tuple[str, list[dict]]:
    kind = str(rng.choice(["arch", "footbridge", "gate", "arcade"]))
    radius, thickness = float(rng.uniform(0.4, 0.8)), float(rng.uniform(0.06, 0.18))
    depth, spring = float(rng.uniform(0.12, 0.5)), float(rng.choice([0.0, rng.uniform(10.0, 35.0)]))
    pier = float(rng.uniform(0.0, 0.8)) if kind != "gate" else float(rng.uniform(0.6, 1.2))
    segments = int(rng.integers(8, 15))
    spans = int(rng.integers(2, 4)) if kind == "arcade" else 1
    foot = radius * math.cos(math.radians(spring))  # half the span at the springing line
    lift = pier - radius * math.sin(math.radians(spring))  # the arc's centre height
    parts = []
    for k in range(spans):
        x = (k - (spans - 1) / 2) * 2 * foot
        parts += _arc_parts(radius, thickness, depth, spring, (x, lift), segments)
    for k in range(spans + 1) if pier > 0.02 else ():
        x = (k - spans / 2) * 2 * foot
        parts.append(_set_down({"shape": "box", "dims": [thickness * 1.2, depth, pier + 0.02]}, 0.0, (x, 0.0)))
    if kind == "footbridge":  # a deck over the crown and a railing of thin posts
        top = lift + radius + thickness / 2 + 0.03  # the deck's upper face, the deck resting on the crown
        deck_length = 2 * foot * spans + 0.2
        parts.append(_set_down({"shape": "box", "dims": [deck_length, depth, 0.04]}, top - 0.04))
        for x in np.linspace(-deck_length / 2 + 0.05, deck_length / 2 - 0.05, int(rng.integers(4, 9))):
            parts.append(_set_down(_bar("cylinder", 0.012, 0.3), top, (float(x), depth / 2 - 0.02)))
        parts.append(_set_down(_horizontal(_bar("cylinder", 0.015, deck_length)), top + 0.28, (0.0, depth / 2 - 0.02)))
    return kind, parts


def _polar_azimuth(vector: np.ndarray) -> tuple[float, float]:
    """The rotation (degrees from straight up, degrees about z) that turns a part built along z to point along
    `vector`: its `rotation_deg` is [0, polar, azimuth]."""
    polar = math.degrees(math.acos(max(-1.0, min(1.0, vector[2] / float(np.linalg.norm(vector))))))
    return polar, math.degrees(math.atan2(vector[1], vector[0]))


def _rod(start, end, radius: float) -> dict:
    """A cylinder of `radius` from point `start` to point `end` (x, y, z)."""
    start, end = np.asarray(start, dtype=np.float64), np.asarray(end, dtype=np.float64)
    axis = end - start
    polar, azimuth = _polar_azimuth(axis)
    rod = {"shape": "cylinder", "dims": [radius, float(np.linalg.norm(axis))], "rotation_deg": [0.0, polar, azimuth]}
    return _centred_at(rod, (start + end) / 2)


def _ladder_rods(bottom, top, width: float, rungs: int, rail: float, rung: float, side=(1.0, 0.0, 0.0)) -> list:
    """Two rails from `bottom` to `top` (their midline), `width` apart along `side`, joined by `rungs` rungs."""
    bottom, top, side = (np.asarray(v, dtype=np.float64) for v in (bottom, top, side))
    half = side / np.linalg.norm(side) * width / 2
    rods = [_rod(bottom + sign * half, top + sign * half, rail) for sign in (1, -1)]
    for f in np.linspace(0.0, 1.0, rungs + 2)[1:-1]:
        point = bottom + f * (top - bottom)
        rods.append(_rod(point - half * 1.05, point + half * 1.05, rung))
    return rods


def _ladder_parts(rng: np.random.Generator) -> tuple[str, list[dict]]:
    kind = str(rng.choice(["leaning", "stepladder", "lying", "rack"]))
    length, width = float(rng.uniform(1.0, 2.2)), float(rng.uniform(0.3, 0.7))
    rail, rung = float(rng.uniform(0.012, 0.04)), float(rng.uniform(0.008, 0.025))
    rungs = int(rng.integers(3, 10))
    if kind == "leaning":  # propped up at an angle, its foot on the ground
        tilt = math.radians(float(rng.uniform(15.0, 60.0)))
        top = (length * math.sin(tilt), 0.0, length * math.cos(tilt))
        return kind, _ladder_rods((0.0, 0.0, 0.0), top, width, rungs, rail, rung, side=(0.0, 1.0, 0.0))
    if kind == "lying":
        return kind, _ladder_rods((0.0, 0.0, rail), (length, 0.0, rail), width, rungs, rail, rung, side=(0, 1, 0))
    spread = length * float(rng.uniform(0.2, 0.45))  # half the distance between the two feet
    height = math.sqrt(max(length**2 - spread**2, 0.25))
    if kind == "stepladder":  # two ladders leaning on each other
        parts = _ladder_rods((-spread, 0, 0), (0, 0, height), width, rungs, rail, rung, side=(0, 1, 0))
        back_rungs = int(rng.integers(0, 3))
        return kind, parts + _ladder_rods((spread, 0, 0), (0, 0, height), width, back_rungs, rail, rung, (0, 1, 0))
    # rack: two A-frame ends joined by long bars
    depth = float(rng.uniform(0.6, 1.6))
    parts = []
    for y in (-depth / 2, depth / 2):
        parts += [_rod((-spread, y, 0), (0, y, height), rail), _rod((spread, y, 0), (0, y, height), rail)]
    for f in np.linspace(0.2, 1.0, rungs // 2 + 2):
        for sign in (-1, 1):
            x, z = sign * spread * (1 - f), height * f
            parts.append(_rod((x, -depth / 2 - 0.02, z), (x, depth / 2 + 0.02, z), rung))
            if f == 1.0:
                break
    return kind, parts


def _lathe_parts(rng: np.random.Generator) -> tuple[str, list[dict]]:
    """A turned object: a profile of revolution drawn as stacked frustums (a thin stem where it has one)."""
    kind = str(rng.choice(["vase", "goblet", "candlestick", "bottle", "baluster"]))
    scale = float(rng.uniform(0.6, 1.4))
    if kind == "goblet":
        stem = float(rng.uniform(0.015, 0.05))
        profile = [(0.25, 0.0), (0.25, 0.02), (stem, 0.06), (stem, float(rng.uniform(0.3, 0.7)))]
        cup = float(rng.uniform(0.15, 0.35))
        base_z = profile[-1][1]
        profile += [(cup * 0.6, base_z + 0.1), (cup, base_z + 0.1 + float(rng.uniform(0.15, 0.4)))]
    elif kind == "candlestick":
        stem = float(rng.uniform(0.02, 0.05))
        height = float(rng.uniform(0.6, 1.2))
        profile = [(float(rng.uniform(0.15, 0.3)), 0.0), (stem * 3, 0.05), (stem, 0.1)]
        for z in np.linspace(0.2, height, int(rng.integers(1, 4)) + 1)[:-1]:  # knops along the stem
            profile += [(stem, float(z) - 0.03), (stem * 2.5, float(z)), (stem, float(z) + 0.03)]
        profile += [(stem, height), (stem * 3, height + 0.03), (stem * 1.5, height + 0.06)]
        profile += [(stem * 1.4, height + 0.06 + float(rng.uniform(0.1, 0.4)))]  # the candle
    else:
        count = int(rng.integers(4, 9))
        heights = np.cumsum(rng.uniform(0.05, 0.35, size=count))
        if kind == "bottle":
            body = float(rng.uniform(0.12, 0.3))
            radii = [body] * (count - 2) + [body * 0.35, body * 0.25]
        elif kind == "baluster":
            radii = list(rng.uniform(0.04, 0.2, size=count))
        else:  # vase
            radii = list(np.abs(np.sin(np.linspace(0.5, float(rng.uniform(2.0, 3.0)), count))) * 0.3 + 0.05)
        profile = [(float(radii[0]), 0.0)] + [(float(r), float(z)) for r, z in zip(radii, heights)]
    parts = []
    for (r0, z0), (r1, z1) in zip(profile[:-1], profile[1:]):
        if z1 - z0 > 1e-3:
            cone = {"shape": "cone", "dims": [r0 * scale, r1 * scale, (z1 - z0) * scale + 0.002]}
            parts.append(_set_down(cone, z0 * scale))
    return kind, parts


def _frame_parts(rng: np.random.Generator) -> tuple[str, list[dict]]:
    """Wire frames and lattices: thin bars around holes."""
    kind = str(rng.choice(["cube", "pyramid", "trellis", "pergola"]))
    bar = float(rng.uniform(0.01, 0.04))
    if kind in ("cube", "pyramid"):
        sx, sy, sz = (float(v) for v in rng.uniform([0.5, 0.5, 0.5], [1.5, 1.5, 1.5]))
        lift = float(rng.choice([0.0, rng.uniform(0.0, 0.3)]))  # on its edges, or on four feet
        base = [
            (x, y, lift + bar) for x, y in ((-sx / 2, -sy / 2), (sx / 2, -sy / 2), (sx / 2, sy / 2), (-sx / 2, sy / 2))
        ]
        parts = [_rod(base[k], base[(k + 1) % 4], bar) for k in range(4)]
        if kind == "pyramid":
            parts += [_rod(corner, (0.0, 0.0, lift + sz), bar) for corner in base]
        else:
            top = [(x, y, lift + sz) for x, y, _ in base]
            parts += [_rod(top[k], top[(k + 1) % 4], bar) for k in range(4)]
            parts += [_rod((x, y, 0.0 if lift else lift + bar), t, bar) for (x, y, _), t in zip(base, top)]
        return kind, parts
    if kind == "trellis":  # a grid standing upright on two posts
        width, height = float(rng.uniform(0.8, 1.8)), float(rng.uniform(0.8, 1.8))
        lift = float(rng.uniform(0.0, 0.4))
        parts = [_rod((x, 0.0, 0.0), (x, 0.0, lift + height), bar * 1.5) for x in (-width / 2, width / 2)]
        diagonal = rng.uniform() < 0.4
        for f in np.linspace(0.0, 1.0, int(rng.integers(3, 8))):
            if diagonal and f == 0.0:  # the diagonals' first line would be a point
                continue
            if diagonal:
                parts.append(_rod((-width / 2 + f * width, 0, lift), (-width / 2, 0, lift + f * height), bar))
                parts.append(
                    _rod((width / 2 - f * width, 0, lift + height), (width / 2, 0, lift + (1 - f) * height), bar)
                )
            else:
                parts.append(_rod((-width / 2, 0, lift + f * height), (width / 2, 0, lift + f * height), bar))
                parts.append(_rod((-width / 2 + f * width, 0, lift), (-width / 2 + f * width, 0, lift + height), bar))
        return kind, [p for p in parts if p["dims"][1] > 4 * bar]
    # pergola: four posts and an open roof of beams, the ground under it lit through the gaps
    sx, sy, height = (float(v) for v in rng.uniform([0.8, 0.8, 0.8], [1.8, 1.4, 1.6]))
    post = float(rng.uniform(0.02, 0.06))
    parts = [_rod((x, y, 0.0), (x, y, height), post) for x in (-sx / 2, sx / 2) for y in (-sy / 2, sy / 2)]
    for y in (-sy / 2, sy / 2):
        parts.append(_rod((-sx / 2 - 0.1, y, height), (sx / 2 + 0.1, y, height), post))
    for x in np.linspace(-sx / 2, sx / 2, int(rng.integers(3, 9))):
        parts.append(
            _rod((float(x), -sy / 2 - 0.15, height + post * 2), (float(x), sy / 2 + 0.15, height + post * 2), bar)
        )
    return kind, parts


def _figure_parts(rng: np.random.Generator) -> tuple[str, list[dict]]:
    """Bodies on limbs: four-legged animals, standing figures, bare trees."""
    kind = str(rng.choice(["animal", "person", "tree"]))
    if kind == "animal":
        leg, length = float(rng.uniform(0.3, 0.8)), float(rng.uniform(0.6, 1.3))
        body = float(rng.uniform(0.12, 0.3))
        limb = float(rng.uniform(0.02, 0.06))
        torso = _horizontal({"shape": "cylinder", "dims": [body, length]})
        parts = [_centred_at(torso, (0.0, 0.0, leg + body))]
        for x in (-length / 2 + limb * 2, length / 2 - limb * 2):
            for y in (-body * 0.6, body * 0.6):
                stride = float(rng.uniform(-0.15, 0.15))
                parts.append(_rod((x + stride, y, 0.0), (x, y, leg + body), limb))
        neck_top = (length / 2 + float(rng.uniform(0.1, 0.3)), 0.0, leg + body + float(rng.uniform(0.2, 0.5)))
        parts.append(_rod((length / 2 - 0.05, 0.0, leg + body), neck_top, limb * 1.3))
        head = float(rng.uniform(0.08, 0.16))
        parts.append(_centred_at({"shape": "sphere", "dims": [head, 1.0]}, neck_top))
        parts.append(_rod((-length / 2, 0.0, leg + body), (-length / 2 - 0.3, 0.0, leg + body - 0.2), limb * 0.6))
        return kind, parts
    if kind == "person":
        leg, torso, limb = float(rng.uniform(0.6, 0.9)), float(rng.uniform(0.5, 0.7)), float(rng.uniform(0.03, 0.07))
        stance = float(rng.uniform(0.05, 0.25))
        hips, shoulders = leg, leg + torso
        parts = [_rod((sign * stance, 0.0, 0.0), (sign * 0.08, 0.0, hips + 0.05), limb) for sign in (-1, 1)]
        parts.append(_set_down({"shape": "box", "dims": [0.3, 0.15, torso]}, hips))
        for sign in (-1, 1):
            lift = math.radians(float(rng.uniform(-20.0, 120.0)))  # 0: hanging down; 90: held out sideways
            reach = 0.6 * torso + 0.2
            hand = (sign * (0.17 + reach * math.sin(lift)), 0.0, shoulders - 0.05 - reach * math.cos(lift))
            parts.append(_rod((sign * 0.17, 0.0, shoulders - 0.05), hand, limb * 0.8))
        parts.append(_set_down({"shape": "sphere", "dims": [float(rng.uniform(0.09, 0.13)), 1.1]}, shoulders + 0.02))
        return kind, parts
    # tree: a trunk that forks into thinner branches, twice
    trunk, height = float(rng.uniform(0.03, 0.08)), float(rng.uniform(0.5, 1.0))
    parts = [_rod((0.0, 0.0, 0.0), (0.0, 0.0, height), trunk)]
    tips = [((0.0, 0.0, height), 90.0, 0.0, trunk, height * 0.7)]
    for _ in range(2):
        grown = []
        for (x, y, z), _, _, radius, length in tips:
            for _ in range(int(rng.integers(2, 4))):
                polar, azimuth = float(rng.uniform(20.0, 60.0)), float(rng.uniform(0.0, 360.0))
                end = (
                    x + length * math.sin(math.radians(polar)) * math.cos(math.radians(azimuth)),
                    y + length * math.sin(math.radians(polar)) * math.sin(math.radians(azimuth)),
                    z + length * math.cos(math.radians(polar)),
                )
                parts.append(_rod((x, y, z), end, radius * 0.65))
                grown.append((end, polar, azimuth, radius * 0.65, length * 0.7))
        tips = grown
    return kind, parts


def _chaikin(path: np.ndarray, rounds: int = 3) -> np.ndarray:
    """An open polyline [N,3] with its corners cut `rounds` times (Chaikin), its two ends kept: a bent wire, not a
    kinked one (a tube swept round a sharp corner would pinch)."""
    for _ in range(rounds):
        a, b = path[:-1], path[1:]
        cut = np.stack([0.75 * a + 0.25 * b, 0.25 * a + 0.75 * b], axis=1).reshape(-1, 3)
        path = np.concatenate([path[:1], cut, path[-1:]])
    return path


def _wire(radius: float, path, closed: bool = False) -> dict:
    path = np.asarray(path, dtype=np.float64)
    return {"shape": "tube", "dims": [radius, 1.0 if closed else 0.0, *path.reshape(-1).tolist()]}


def _wire_in_place(radius: float, path, closed: bool = False) -> dict:
    """A tube along `path` where the path lies: one part of an object put together in place."""
    return dict(_wire(radius, path, closed), offset=[0.0, 0.0, 0.0])


def _wire_parts(rng: np.random.Generator) -> tuple[str, list[dict]]:
    """Bent wire: one thin round tube along a curve -- a spring, a coat hanger, a spiral, a wavy loop, a zigzag."""
    kind = str(rng.choice(["spring", "hanger", "spiral", "loop", "zigzag"]))
    wire = float(rng.uniform(0.012, 0.035))
    if kind == "spring":
        radius, turns = float(rng.uniform(0.15, 0.45)), int(rng.integers(3, 9))
        pitch = float(rng.uniform(0.1, 0.35))
        t = np.linspace(0.0, 2 * np.pi * turns, 24 * turns)
        path = np.stack([radius * np.cos(t), radius * np.sin(t), wire + pitch * t / (2 * np.pi)], axis=1)
        part = _wire(wire, path)
        if rng.uniform() < 0.4:
            part["rotation_deg"] = [90.0, 0.0, 0.0]  # lying on its side
        return kind, [_set_down(part)]
    if kind == "hanger":  # a triangle standing on its bottom bar, a hook over the apex
        half, height = float(rng.uniform(0.4, 0.8)), float(rng.uniform(0.3, 0.6))
        hook = float(rng.uniform(0.06, 0.14))
        a = np.linspace(0.0, 1.4 * np.pi, 20)
        hook_path = np.stack([hook * np.sin(a), np.zeros_like(a), height + 0.1 + hook * (1 - np.cos(a))], axis=1)
        corners = np.array([[0.0, 0.0, height], [-half, 0.0, wire], [half, 0.0, wire], [0.0, 0.0, height]])
        path = np.concatenate([_chaikin(corners, 2), [[0.0, 0.0, height + 0.1]], hook_path[1:]])
        return kind, [_set_down(_wire(wire, path))]
    if kind == "spiral":  # flat on the ground, or a cone of coils standing up
        turns, outer = float(rng.uniform(2.0, 5.0)), float(rng.uniform(0.4, 0.9))
        t = np.linspace(0.0, 2 * np.pi * turns, int(30 * turns))
        r = outer * (0.15 + 0.85 * t / t[-1])
        z = np.full_like(t, wire) if rng.uniform() < 0.5 else wire + float(rng.uniform(0.4, 1.2)) * (1 - t / t[-1])
        return kind, [_set_down(_wire(wire, np.stack([r * np.cos(t), r * np.sin(t), z], axis=1)))]
    if kind == "loop":  # a closed wavy loop, tilted: a wire sculpture
        t = np.linspace(0.0, 2 * np.pi, 120, endpoint=False)
        lobes, radius = int(rng.integers(2, 6)), float(rng.uniform(0.4, 0.9))
        r = radius * (1 + float(rng.uniform(0.15, 0.45)) * np.cos(lobes * t + float(rng.uniform(0, np.pi))))
        z = float(rng.uniform(0.1, 0.5)) * (1 + np.sin(int(rng.integers(1, 4)) * t))
        part = _wire(wire, np.stack([r * np.cos(t), r * np.sin(t), z], axis=1), closed=True)
        part["rotation_deg"] = [float(rng.uniform(0.0, 80.0)), 0.0, 0.0]
        return kind, [_set_down(part)]
    # zigzag: a wire bent back and forth, standing upright on its lowest bends
    count, width, height = int(rng.integers(3, 8)), float(rng.uniform(0.8, 1.8)), float(rng.uniform(0.3, 1.0))
    x = np.linspace(-width / 2, width / 2, count + 1)
    z = np.where(np.arange(count + 1) % 2 == 0, wire, height)
    return kind, [_set_down(_wire(wire, _chaikin(np.stack([x, np.zeros_like(x), z], axis=1))))]


def _beam(start, end, width: float, depth: float, lying: bool = False) -> dict:
    """A box from point `start` to point `end` of a letter's plane, `width` across the stroke and `depth` through the
    plane: the stroke of a letter standing in the xz plane, or (`lying`) lying in the xy plane on the ground."""
    (x0, v0), (x1, v1) = start, end
    angle = math.degrees(math.atan2(v1 - v0, x1 - x0))
    length = math.hypot(x1 - x0, v1 - v0)
    if lying:
        beam = {"shape": "box", "dims": [length + width, width, depth], "rotation_deg": [0.0, 0.0, angle]}
        return _centred_at(beam, ((x0 + x1) / 2, (v0 + v1) / 2, depth / 2))
    beam = {"shape": "box", "dims": [length + width, depth, width], "rotation_deg": [0.0, -angle, 0.0]}
    return _centred_at(beam, ((x0 + x1) / 2, 0.0, (v0 + v1) / 2))


# Block letters as strokes between points of the unit box (x right, z up), the holes and gaps of type.
_GLYPH_STROKES = {
    "A": [((0, 0), (0.5, 1)), ((1, 0), (0.5, 1)), ((0.25, 0.4), (0.75, 0.4))],
    "E": [((0, 0), (0, 1)), ((0, 0), (1, 0)), ((0, 0.5), (0.8, 0.5)), ((0, 1), (1, 1))],
    "F": [((0, 0), (0, 1)), ((0, 0.5), (0.8, 0.5)), ((0, 1), (1, 1))],
    "H": [((0, 0), (0, 1)), ((1, 0), (1, 1)), ((0, 0.5), (1, 0.5))],
    "K": [((0, 0), (0, 1)), ((0, 0.45), (1, 1)), ((0.3, 0.6), (1, 0))],
    "M": [((0, 0), (0, 1)), ((1, 0), (1, 1)), ((0, 1), (0.5, 0.4)), ((1, 1), (0.5, 0.4))],
    "N": [((0, 0), (0, 1)), ((1, 0), (1, 1)), ((0, 1), (1, 0))],
    "O": [((0, 0), (0, 1)), ((1, 0), (1, 1)), ((0, 0), (1, 0)), ((0, 1), (1, 1))],
    "P": [((0, 0), (0, 1)), ((0, 1), (1, 1)), ((1, 1), (1, 0.5)), ((0, 0.5), (1, 0.5))],
    "T": [((0.5, 0), (0.5, 1)), ((0, 1), (1, 1))],
    "U": [((0, 0), (0, 1)), ((1, 0), (1, 1)), ((0, 0), (1, 0))],
    "W": [((0, 1), (0.25, 0)), ((0.25, 0), (0.5, 0.6)), ((0.5, 0.6), (0.75, 0)), ((0.75, 0), (1, 1))],
    "X": [((0, 0), (1, 1)), ((1, 0), (0, 1))],
    "Y": [((0.5, 0), (0.5, 0.5)), ((0.5, 0.5), (0, 1)), ((0.5, 0.5), (1, 1))],
    "Z": [((0, 1), (1, 1)), ((1, 1), (0, 0)), ((0, 0), (1, 0))],
}


def _glyph_parts(rng: np.random.Generator) -> tuple[str, list[dict]]:
    """Block letters standing up (one, or a word of two or three side by side), or one lying flat: strokes of type
    with the holes and gaps between them."""
    letters = "".join(rng.choice(sorted(_GLYPH_STROKES), size=int(rng.choice([1, 1, 2, 3]))))
    width, height = float(rng.uniform(0.5, 1.0)), float(rng.uniform(0.7, 1.4))
    stroke, depth = height * float(rng.uniform(0.06, 0.16)), float(rng.uniform(0.06, 0.4))
    pitch = width + float(rng.uniform(0.15, 0.4))
    lying = len(letters) == 1 and rng.uniform() < 0.25  # on its back: only its thickness stands up
    parts = []
    for k, letter in enumerate(letters):
        left = (k - (len(letters) - 1) / 2) * pitch - width / 2
        for (x0, z0), (x1, z1) in _GLYPH_STROKES[letter]:
            start = (left + x0 * width, stroke / 2 + z0 * (height - stroke))
            end = (left + x1 * width, stroke / 2 + z1 * (height - stroke))
            parts.append(_beam(start, end, stroke, depth, lying))
    return ("lying-" if lying else "") + letters, parts


def _shelf_parts(rng: np.random.Generator) -> tuple[str, list[dict]]:
    """Boards with overhangs and open compartments: bookcases, cubby grids, cantilevered desks, open stairs, canopies."""
    kind = str(rng.choice(["bookcase", "cubby", "cantilever", "stairs", "canopy"]))
    board = float(rng.uniform(0.02, 0.06))
    width, depth, height = (float(v) for v in rng.uniform([0.6, 0.25, 0.8], [1.6, 0.6, 2.0]))
    if kind in ("bookcase", "cubby"):
        rows = int(rng.integers(2, 6)) if kind == "bookcase" else int(rng.integers(2, 4))
        cols = 1 if kind == "bookcase" else int(rng.integers(2, 5))
        height = height if kind == "bookcase" else rows * width / cols
        parts = [
            _set_down({"shape": "box", "dims": [board, depth, height]}, 0.0, (float(x), 0.0))
            for x in np.linspace(-width / 2, width / 2, cols + 1)
        ]
        for z in np.linspace(0.0, height - board, rows + 1):
            parts.append(_set_down({"shape": "box", "dims": [width + board, depth, board]}, float(z)))
        if rng.uniform() < 0.4:  # a back panel: the compartments closed on one side
            parts.append(_set_down({"shape": "box", "dims": [width + board, board, height]}, 0.0, (0, -depth / 2)))
        return kind, parts
    if kind == "cantilever":  # a top on one pedestal at one end, the rest of it in the air
        top_height = float(rng.uniform(0.5, 1.0))
        pedestal = float(rng.uniform(0.15, 0.35)) * width
        parts = [
            _set_down(
                {"shape": "box", "dims": [pedestal, depth, top_height - board]}, 0.0, (-(width - pedestal) / 2, 0)
            ),
            _set_down({"shape": "box", "dims": [width, depth, board]}, top_height - board),
        ]
        if rng.uniform() < 0.5:  # a shelf halfway, sticking out the same way
            parts.append(_set_down({"shape": "box", "dims": [0.6 * width, depth, board]}, top_height / 2, (0.0, 0.0)))
        return kind, parts
    if kind == "stairs":  # open treads on two thin stringers
        steps = int(rng.integers(3, 8))
        rise, run = height / steps, float(rng.uniform(0.15, 0.3))
        parts = []
        for k in range(steps):
            parts.append(
                _set_down({"shape": "box", "dims": [width, run * 1.1, board]}, (k + 1) * rise - board, (0, k * run))
            )
        for x in (-width / 2, width / 2):
            bottom, top = np.array([x, -run / 2, 0.0]), np.array([x, (steps - 0.5) * run, steps * rise - board])
            parts.append(_rod(bottom, top, board))
        return kind, parts
    # canopy: a back panel on the ground and a roof sticking out forward over open ground, on one or two front posts
    roof_depth = float(rng.uniform(0.5, 1.2))
    parts = [
        _set_down({"shape": "box", "dims": [width, board, height]}, 0.0, (0.0, 0.0)),
        _set_down({"shape": "box", "dims": [width + 0.1, roof_depth, board]}, height, (0.0, roof_depth / 2)),
    ]
    for x in (-width / 2, width / 2) if rng.uniform() < 0.5 else ():
        parts.append(_rod((x, roof_depth - 0.05, 0.0), (x, roof_depth - 0.05, height), board * 0.8))
    return kind, parts


def _sticks_parts(rng: np.random.Generator) -> tuple[str, list[dict]]:
    """Loose thin rods: a pile of pick-up sticks, a teepee of poles, an easel, a sawbuck of crossed poles."""
    kind = str(rng.choice(["pile", "teepee", "easel", "sawbuck"]))
    rod = float(rng.uniform(0.01, 0.035))
    if kind == "pile":  # lying across each other, some propped up at one end
        parts = []
        for _ in range(int(rng.integers(4, 11))):
            length, azimuth = float(rng.uniform(0.8, 2.0)), float(rng.uniform(0.0, 2 * np.pi))
            centre = rng.uniform(-0.4, 0.4, size=2)
            half = 0.5 * length * np.array([math.cos(azimuth), math.sin(azimuth)])
            lift = float(rng.choice([0.0, rng.uniform(0.05, 0.4)]))
            parts.append(_rod((*(centre - half), rod), (*(centre + half), rod + lift), rod))
        return kind, parts
    if kind == "teepee":  # poles from a circle on the ground crossing at the top and sticking out above it
        count, spread, height = int(rng.integers(3, 7)), float(rng.uniform(0.3, 0.8)), float(rng.uniform(1.0, 2.0))
        overshoot = float(rng.uniform(0.1, 0.35))
        parts = []
        for k in range(count):
            azimuth = 2 * np.pi * k / count + float(rng.uniform(-0.2, 0.2))
            foot = np.array([spread * math.cos(azimuth), spread * math.sin(azimuth), 0.0])
            apex = np.array([0.0, 0.0, height])
            parts.append(_rod(foot, apex + overshoot * (apex - foot), rod))
        return kind, parts
    if kind == "easel":  # two front legs and one back leg meeting at the top, a ledge, maybe a board on the ledge
        height, spread = float(rng.uniform(1.2, 2.0)), float(rng.uniform(0.25, 0.5))
        lean = float(rng.uniform(0.15, 0.35)) * height
        top = (0.0, 0.0, height)
        parts = [_rod((sign * spread, -lean, 0.0), top, rod) for sign in (-1, 1)]
        parts.append(_rod((0.0, lean * float(rng.uniform(1.5, 3.0)), 0.0), (0.0, 0.0, 0.92 * height), rod))
        ledge_z = float(rng.uniform(0.3, 0.5)) * height
        ledge_y = -lean * (1 - ledge_z / height)
        parts.append(_rod((-spread, ledge_y, ledge_z), (spread, ledge_y, ledge_z), rod * 1.5))
        if rng.uniform() < 0.5:
            board_height = float(rng.uniform(0.3, 0.5)) * height
            board = {"shape": "box", "dims": [2 * spread * float(rng.uniform(1.0, 1.6)), 0.02, board_height]}
            board["rotation_deg"] = [-math.degrees(math.atan2(lean, height)), 0.0, 0.0]
            parts.append(_centred_at(board, (0.0, ledge_y + 0.03, ledge_z + board_height / 2)))
        return kind, parts
    # sawbuck: two X's of crossed poles, a log or a rail lying in their forks
    length, height = float(rng.uniform(0.8, 1.8)), float(rng.uniform(0.5, 1.0))
    splay = float(rng.uniform(0.3, 0.6)) * height
    parts = []
    for x in (-length / 2, length / 2):
        parts += [
            _rod((x, -splay, 0.0), (x, splay, height), rod * 1.5),
            _rod((x, splay, 0.0), (x, -splay, height), rod * 1.5),
        ]
    fork = height / 2 + float(rng.uniform(0.05, 0.15)) * height
    log = float(rng.choice([rod * 2, rng.uniform(0.05, 0.12)]))
    parts.append(_rod((-length / 2 - 0.3, 0.0, fork + log), (length / 2 + 0.3, 0.0, fork + log), log))
    return kind, parts


def _block(low, high) -> dict:
    """An axis-aligned box from corner `low` to corner `high` (x, y, z)."""
    low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    return _centred_at({"shape": "box", "dims": [float(v) for v in high - low]}, (low + high) / 2)


def _wheel(centre, radius: float, tyre: float, spokes: int) -> list[dict]:
    """A wheel standing in the xz plane at `centre` (its axle along y): a tyre ring, and `spokes` spokes to a hub,
    or a solid disc when there are none."""
    x, y, z = centre
    if spokes == 0:
        return [_rod((x, y - tyre, z), (x, y + tyre, z), radius)]
    ring = _centred_at({"shape": "torus", "dims": [radius - tyre, tyre], "rotation_deg": [90.0, 0.0, 0.0]}, centre)
    parts = [ring]
    for k in range(spokes):
        angle = math.pi * k / spokes  # each spoke a diameter through the hub
        reach = np.array([math.cos(angle), 0.0, math.sin(angle)]) * (radius - tyre)
        parts.append(_rod(np.asarray(centre) - reach, np.asarray(centre) + reach, tyre * 0.35))
    return parts


def _cart_parts(rng: np.random.Generator) -> tuple[str, list[dict]]:
    """Bodies on wheels: a wagon, a wheelbarrow, a bicycle, a hand trolley; light passes under the body, between the
    wheels and through their spokes."""
    kind = str(rng.choice(["wagon", "wheelbarrow", "bicycle", "trolley"]))
    spokes = int(rng.choice([0, 3, 4, 6]))
    if kind == "wagon":  # an open box on two axles, a pull handle
        length, width = float(rng.uniform(0.8, 1.6)), float(rng.uniform(0.4, 0.8))
        wheel = float(rng.uniform(0.12, 0.25))
        tyre, wall = wheel * 0.18, float(rng.uniform(0.02, 0.05))
        floor, side = wheel * float(rng.uniform(1.2, 1.9)), float(rng.uniform(0.1, 0.35))  # on its wheels
        parts = [_block((-length / 2, -width / 2, floor), (length / 2, width / 2, floor + wall))]
        for y in (-width / 2, width / 2 - wall):  # the box's long sides
            parts.append(_block((-length / 2, y, floor), (length / 2, y + wall, floor + side)))
        for x in (-length / 2, length / 2 - wall):
            parts.append(_block((x, -width / 2, floor), (x + wall, width / 2, floor + side)))
        for x in (-0.35 * length, 0.35 * length):
            parts.append(_rod((x, -width / 2 - tyre, wheel), (x, width / 2 + tyre, wheel), tyre * 0.5))
            for y in (-width / 2 - tyre, width / 2 + tyre):
                parts += _wheel((x, y, wheel), wheel, tyre, spokes)
        handle = float(rng.uniform(0.4, 0.9))
        parts.append(_rod((length / 2, 0.0, floor), (length / 2 + handle, 0.0, floor + handle * 0.6), wall))
        return kind, parts
    if kind == "wheelbarrow":  # a tray on one front wheel and two legs, two handles out the back
        length, width = float(rng.uniform(0.7, 1.2)), float(rng.uniform(0.4, 0.7))
        wheel, rail = float(rng.uniform(0.15, 0.25)), float(rng.uniform(0.015, 0.03))
        tray_z = float(rng.uniform(0.35, 0.55))
        tray = {"shape": "cone", "dims": [width * 0.3, width / 2, float(rng.uniform(0.15, 0.3))]}
        parts = [_set_down(tray, tray_z)]
        for y in (-width * 0.3, width * 0.3):
            parts.append(_rod((length / 2, y * 0.3, wheel), (-length, y, tray_z + 0.1), rail))  # frame + handle
            parts.append(_rod((-length * 0.3, y, 0.0), (-length * 0.3, y, tray_z), rail))  # leg
        parts += _wheel((length / 2, 0.0, wheel), wheel, wheel * 0.2, spokes)
        return kind, parts
    if kind == "bicycle":  # two spoked wheels, a diamond frame, a saddle and handlebars
        wheel, tube = float(rng.uniform(0.25, 0.4)), float(rng.uniform(0.012, 0.025))
        base = wheel * float(rng.uniform(2.4, 3.0))
        rear, front = np.array([-base / 2, 0.0, wheel]), np.array([base / 2, 0.0, wheel])
        crank = np.array([-base * 0.05, 0.0, wheel * 0.9])
        seat, head = (
            crank + np.array([-0.2 * wheel, 0.0, 1.3 * wheel]),
            front + np.array([-0.3 * wheel, 0, 1.4 * wheel]),
        )
        parts = _wheel(rear, wheel, wheel * 0.08, max(spokes, 4)) + _wheel(front, wheel, wheel * 0.08, max(spokes, 4))
        for start, end in ((rear, crank), (rear, seat), (crank, seat), (crank, head), (seat, head), (head, front)):
            parts.append(_rod(start, end, tube))
        parts.append(_centred_at({"shape": "box", "dims": [0.2 * wheel, 0.1 * wheel, 0.04]}, seat + (0, 0, 0.04)))
        bar = head + np.array([0.0, 0.0, 0.15 * wheel])
        parts.append(_rod(head, bar, tube))
        parts.append(_rod(bar - (0, 0.35 * wheel, 0), bar + (0, 0.35 * wheel, 0), tube))
        return kind, parts
    # trolley: a hand truck, a tall frame on two small wheels with a toe plate, leaning back or upright
    height, width = float(rng.uniform(0.9, 1.4)), float(rng.uniform(0.35, 0.6))
    wheel, rail = float(rng.uniform(0.08, 0.15)), float(rng.uniform(0.015, 0.03))
    lean = float(rng.choice([0.0, rng.uniform(0.1, 0.4)])) * height
    parts = [_block((-0.02, -width / 2, 0.0), (0.3 * width, width / 2, 0.02))]  # the toe plate
    for y in (-width / 2, width / 2):
        parts.append(_rod((0.0, y, 0.02), (-lean, y, height), rail))
        parts += _wheel((-wheel * 0.6, y + np.sign(y) * wheel * 0.3, wheel), wheel, wheel * 0.25, spokes)
    for f in np.linspace(0.3, 1.0, int(rng.integers(2, 5))):
        parts.append(_rod((-lean * f, -width / 2, height * f), (-lean * f, width / 2, height * f), rail))
    return kind, parts


def _tower_parts(rng: np.random.Generator) -> tuple[str, list[dict]]:
    """Braced lattices: a tapering lattice mast, an electricity pylon with crossarms, scaffolding with a plank, a water
    tank on braced legs."""
    kind = str(rng.choice(["mast", "pylon", "scaffold", "tank"]))
    rod = float(rng.uniform(0.01, 0.03))
    if kind in ("mast", "pylon"):
        legs = 3 if kind == "mast" and rng.uniform() < 0.5 else 4
        height = float(rng.uniform(1.2, 2.5))
        foot, top = float(rng.uniform(0.2, 0.5)), float(rng.uniform(0.3, 0.8))
        top *= foot
        levels = int(rng.integers(3, 8))

        def corner(k: int, z: float) -> np.ndarray:
            radius = foot + (top - foot) * z / height
            angle = 2 * np.pi * k / legs + np.pi / legs
            return np.array([radius * math.cos(angle), radius * math.sin(angle), z])

        zs = np.linspace(0.0, height, levels + 1)
        parts = [_rod(corner(k, 0.0), corner(k, height), rod * 1.5) for k in range(legs)]
        for a, b in zip(zs[:-1], zs[1:]):
            for k in range(legs):  # a ring of struts and one diagonal a face at each level
                parts.append(_rod(corner(k, b), corner(k + 1, b), rod))
                parts.append(_rod(corner(k, a), corner(k + 1, b), rod * 0.8))
        if kind == "pylon":  # crossarms sticking out both ways near the top
            for z in np.linspace(0.7, 0.95, int(rng.integers(1, 4))) * height:
                reach = float(rng.uniform(2.0, 4.0)) * top
                parts.append(_rod((-reach, 0.0, z), (reach, 0.0, z), rod * 1.2))
        return kind, parts
    if kind == "scaffold":  # a grid of standards and ledgers, a cross brace, a plank on one lift
        bays, lifts = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        bay, lift, depth = float(rng.uniform(0.5, 0.9)), float(rng.uniform(0.5, 0.8)), float(rng.uniform(0.3, 0.6))
        xs = (np.arange(bays + 1) - bays / 2) * bay
        parts = []
        for x in xs:
            for y in (-depth / 2, depth / 2):
                parts.append(_rod((x, y, 0.0), (x, y, lifts * lift), rod))
        for z in np.arange(1, lifts + 1) * lift:
            for y in (-depth / 2, depth / 2):
                parts.append(_rod((xs[0], y, z), (xs[-1], y, z), rod))
            for x in xs:
                parts.append(_rod((x, -depth / 2, z), (x, depth / 2, z), rod))
        parts.append(_rod((xs[0], depth / 2, 0.0), (xs[-1], depth / 2, lifts * lift), rod))
        z = int(rng.integers(1, lifts + 1)) * lift
        parts.append(_block((xs[0], -depth / 2, z + rod), (xs[-1], depth / 2, z + rod + 0.03)))
        return kind, parts
    # tank: a cylinder or a ball high on four legs with X bracing between them
    leg_height, spread = float(rng.uniform(0.8, 1.6)), float(rng.uniform(0.25, 0.5))
    radius = spread * float(rng.uniform(1.1, 1.6))
    corners = [np.array([sx * spread, sy * spread]) for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
    parts = [_rod((*c, 0.0), (*c, leg_height), rod * 1.5) for c in corners]
    for a, b in zip(corners, corners[1:] + corners[:1]):
        parts.append(_rod((*a, 0.0), (*b, leg_height * 0.5), rod))
        parts.append(_rod((*b, 0.0), (*a, leg_height * 0.5), rod))
    if rng.uniform() < 0.5:
        parts.append(_set_down({"shape": "cylinder", "dims": [radius, float(rng.uniform(0.4, 0.9))]}, leg_height))
    else:
        parts.append(_set_down({"shape": "sphere", "dims": [radius, 1.0]}, leg_height))
    return kind, parts


def _leaf(base, length: float, width: float, polar: float, azimuth: float) -> dict:
    """A flat blade `length` long and `width` wide from point `base`, `polar` degrees from straight up, turned to
    `azimuth` (degrees about z)."""
    blade = {"shape": "box", "dims": [0.012, width, length], "rotation_deg": [0.0, polar, azimuth]}  # face up
    return _centred_at(blade, np.asarray(base, dtype=np.float64) + light_position(polar, azimuth, length / 2))


def _plant_parts(rng: np.random.Generator) -> tuple[str, list[dict]]:
    """Plants: a pot of leafy stems, a grass tuft of blades, a cactus with arms, a palm with drooping fronds."""
    kind = str(rng.choice(["potted", "tuft", "cactus", "palm"]))
    if kind == "potted":  # a pot, several thin stems fanning out, a leaf or two on each
        pot, height = float(rng.uniform(0.15, 0.35)), float(rng.uniform(0.2, 0.45))
        parts = [_set_down({"shape": "cone", "dims": [pot * 0.75, pot, height]})]
        for _ in range(int(rng.integers(3, 8))):
            polar, azimuth = float(rng.uniform(0.0, 45.0)), float(rng.uniform(0.0, 360.0))
            length, stem = float(rng.uniform(0.4, 1.2)), float(rng.uniform(0.008, 0.02))
            tip = np.array([0.0, 0.0, height]) + light_position(polar, azimuth, length)  # polar/azimuth as a light's
            parts.append(_rod((0.0, 0.0, height * 0.8), tip, stem))
            parts.append(_leaf(tip, float(rng.uniform(0.12, 0.3)), float(rng.uniform(0.06, 0.15)), polar + 40, azimuth))
        return kind, parts
    if kind == "tuft":  # thin blades from one point on the ground, fanning out and up
        parts = []
        for _ in range(int(rng.integers(5, 12))):
            polar, azimuth = float(rng.uniform(5.0, 60.0)), float(rng.uniform(0.0, 360.0))
            parts.append(
                _leaf((0.0, 0.0, 0.0), float(rng.uniform(0.4, 1.2)), float(rng.uniform(0.02, 0.06)), polar, azimuth)
            )
        return kind, parts
    if kind == "cactus":  # a column with arms bent upward, each arm a sideways stub and an upright
        trunk, height = float(rng.uniform(0.08, 0.18)), float(rng.uniform(0.8, 1.8))
        parts = [_set_down({"shape": "cylinder", "dims": [trunk, height]})]
        parts.append(_set_down({"shape": "sphere", "dims": [trunk, 1.0]}, height - trunk))
        for _ in range(int(rng.integers(1, 4))):
            z, azimuth = float(rng.uniform(0.3, 0.7)) * height, float(rng.uniform(0.0, 2 * np.pi))
            reach, rise, arm = float(rng.uniform(0.2, 0.45)), float(rng.uniform(0.2, 0.6)), trunk * 0.6
            out = np.array([math.cos(azimuth), math.sin(azimuth), 0.0]) * reach
            elbow = np.array([0.0, 0.0, z]) + out
            parts.append(_rod((0.0, 0.0, z), elbow, arm))
            parts.append(_rod(elbow - (0, 0, arm), elbow + (0, 0, rise), arm))
        return kind, parts
    # palm: a leaning trunk, a crown of fronds drooping away from its top
    height, trunk = float(rng.uniform(1.0, 2.0)), float(rng.uniform(0.03, 0.07))
    lean = float(rng.uniform(0.0, 0.35)) * height
    top = np.array([lean, 0.0, height])
    path = np.array([[0.0, 0.0, 0.0], [lean * 0.2, 0.0, height * 0.5], top])
    parts = [_wire_in_place(trunk, _chaikin(path))]
    for k in range(int(rng.integers(4, 9))):
        azimuth = 360.0 * k / 8 + float(rng.uniform(-20.0, 20.0))
        parts.append(_leaf(top, float(rng.uniform(0.4, 0.9)), float(rng.uniform(0.06, 0.14)), 100.0, azimuth))
    return kind, parts


def _panel_parts(rng: np.random.Generator) -> tuple[str, list[dict]]:
    """Flat panels with openings: a wall with windows, a folding screen of framed panes, a picture frame propped up, a
    perforated partition of holes in rows."""
    kind = str(rng.choice(["windows", "screen", "frame", "perforated"]))
    thick = float(rng.uniform(0.03, 0.1))
    if kind in ("windows", "perforated"):  # a standing wall, openings cut in rows and columns
        width, height = float(rng.uniform(1.0, 2.0)), float(rng.uniform(0.6, 1.5))
        cols = int(rng.integers(1, 4)) if kind == "windows" else int(rng.integers(4, 8))
        rows = 1 if kind == "windows" else int(rng.integers(2, 5))
        fill = float(rng.uniform(0.4, 0.7))  # the share of each bay that is opening
        xs, zs = np.linspace(-width / 2, width / 2, cols + 1), np.linspace(0.0, height, rows + 1)
        parts = []
        sill, lintel = (zs[0] + 0.25 * height, zs[1] - 0.15 * height) if kind == "windows" else (None, None)
        for x0, x1 in zip(xs[:-1], xs[1:]):
            pier = (x1 - x0) * (1 - fill) / 2
            parts.append(_block((x0, -thick / 2, 0.0), (x0 + pier, thick / 2, height)))
            parts.append(_block((x1 - pier, -thick / 2, 0.0), (x1, thick / 2, height)))
            for z0, z1 in zip(zs[:-1], zs[1:]):
                low, high = (
                    (sill, lintel)
                    if sill is not None
                    else (z0 + (z1 - z0) * (1 - fill) / 2, z1 - (z1 - z0) * (1 - fill) / 2)
                )
                parts.append(_block((x0 + pier, -thick / 2, z0), (x1 - pier, thick / 2, low)))
                parts.append(_block((x0 + pier, -thick / 2, high), (x1 - pier, thick / 2, z1)))
        return kind, parts
    if kind == "screen":  # hinged panes in a zigzag, each a frame round an opening
        panes, width, height = int(rng.integers(2, 5)), float(rng.uniform(0.3, 0.6)), float(rng.uniform(0.9, 1.6))
        bar, fold = float(rng.uniform(0.03, 0.08)), float(rng.uniform(20.0, 50.0))
        parts, x = [], 0.0
        for k in range(panes):
            azimuth = fold if k % 2 == 0 else -fold
            along = np.array([math.cos(math.radians(azimuth)), math.sin(math.radians(azimuth)), 0.0])
            start = np.array([x, 0.0 if k % 2 == 0 else width * math.sin(math.radians(fold)), 0.0])
            end = start + along * width
            for z in (0.0, height - bar):  # the bottom and top rails
                parts.append(_rod(start + (0, 0, z + bar / 2), end + (0, 0, z + bar / 2), bar / 2))
            for post in (start, end):
                parts.append(_rod(post, post + (0, 0, height), bar / 2))
            x = end[0]
        return kind, parts
    # frame: a rectangular frame standing, leaning back on a prop, or lying flat (turned about its bottom rail)
    width, height, bar = float(rng.uniform(0.4, 1.0)), float(rng.uniform(0.4, 1.0)), float(rng.uniform(0.02, 0.06))
    tilt = math.radians(float(rng.choice([0.0, rng.uniform(10.0, 25.0), 90.0])))

    def tilted(x: float, z: float) -> np.ndarray:
        return np.array([x, z * math.sin(tilt), z * math.cos(tilt)])

    corners = [tilted(-width / 2, 0.0), tilted(width / 2, 0.0), tilted(width / 2, height), tilted(-width / 2, height)]
    parts = [_rod(a, b, bar) for a, b in zip(corners, corners[1:] + corners[:1])]
    if 0.0 < tilt < math.pi / 2:  # the prop behind it
        parts.append(_rod((0.0, height * math.sin(tilt) + 0.3 * height, 0.0), tilted(0.0, 0.6 * height), bar / 2))
    kind = "standing-frame" if tilt == 0.0 else "propped-frame" if tilt < math.pi / 2 else "lying-frame"
    return kind, parts


def _euler_from_matrix(rotation: np.ndarray) -> list[float]:
    """The XYZ Euler angles in degrees (euler_matrix's order) of a 3x3 rotation; at pitch +-90 degrees (the box's x
    axis straight up or down), where roll and yaw turn about the same axis, all of the turn goes to the roll."""
    pitch = math.asin(max(-1.0, min(1.0, -rotation[2, 0])))
    if abs(rotation[2, 0]) > 1.0 - 1e-9:
        return [math.degrees(math.atan2(-rotation[1, 2], rotation[1, 1])), math.degrees(pitch), 0.0]
    roll = math.atan2(rotation[2, 1], rotation[2, 2])
    yaw = math.atan2(rotation[1, 0], rotation[0, 0])
    return [math.degrees(roll), math.degrees(pitch), math.degrees(yaw)]


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3x3 rotation (the Q of a Gaussian matrix's QR, signs fixed)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


_UP = (0.0, 0.0, 1.0)


def _slab(centre, along, across, length: float, width: float, thickness: float) -> dict:
    """A thin box `length` along the unit vector `along`, `width` along `across` (perpendicular to it) and `thickness`
    through both, centred at `centre`: a blade, a strip of ribbon."""
    along = _unit(np.asarray(along, dtype=np.float64))
    across = _unit(np.asarray(across, dtype=np.float64) - np.dot(across, along) * along)
    rotation = np.stack([along, across, np.cross(along, across)], axis=1)  # box x, y, z -> world
    box = {"shape": "box", "dims": [length, width, thickness], "rotation_deg": _euler_from_matrix(rotation)}
    return _centred_at(box, centre)


def _spike(base, direction, length: float, radius: float) -> dict:
    """A cone from a disc of `radius` at point `base` to a point `length` along the vector `direction`."""
    polar, azimuth = _polar_azimuth(np.asarray(direction, dtype=np.float64))
    return {"shape": "cone", "dims": [radius, 0.0, length], "rotation_deg": [0.0, polar, azimuth], "offset": list(base)}


def _spiky_parts(rng: np.random.Generator) -> tuple[str, list[dict]]:
    """Spikes from a core: a sea urchin of many thin cones, a toy jack of six ball-tipped arms, a caltrop of four
    spikes, a starburst of spikes in one tilted plane."""
    kind = str(rng.choice(["urchin", "jack", "caltrop", "starburst"]))
    core = float(rng.uniform(0.08, 0.3))
    centre = np.array([0.0, 0.0, 1.0])  # the object is set down on its lowest point afterwards
    parts = [_centred_at({"shape": "sphere", "dims": [core, 1.0]}, centre)]
    if kind == "jack":  # three rods through the centre, a ball on each end
        rotation, reach = _random_rotation(rng), float(rng.uniform(0.4, 0.9))
        rod, ball = float(rng.uniform(0.015, 0.04)), float(rng.uniform(0.04, 0.1))
        for axis in rotation.T:
            parts.append(_rod(centre - reach * axis, centre + reach * axis, rod))
            parts += [_centred_at({"shape": "sphere", "dims": [ball, 1.0]}, centre + s * reach * axis) for s in (-1, 1)]
        return kind, parts
    if kind == "caltrop":  # the four directions of a tetrahedron's corners, turned at random
        directions = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=np.float64) @ _random_rotation(
            rng
        )
        count = 4
    elif kind == "urchin":  # directions spread over the sphere
        count = int(rng.integers(8, 22))
        directions = rng.normal(size=(count, 3))
    else:  # starburst: directions round a circle in a tilted plane
        count = int(rng.integers(5, 13))
        angles = 2 * np.pi * (np.arange(count) + rng.uniform(-0.2, 0.2, size=count)) / count
        plane = _random_rotation(rng)
        directions = np.cos(angles)[:, None] * plane[:, 0] + np.sin(angles)[:, None] * plane[:, 1]
    for direction in directions:
        length = core + float(rng.uniform(0.3, 0.9))
        parts.append(_spike(centre, direction, length, float(rng.uniform(0.02, 0.08))))
    return kind, parts


def _fan_parts(rng: np.random.Generator) -> tuple[str, list[dict]]:
    """Blades round a hub, with light between them: a propeller lying on the ground, a windmill's rotor on a squat
    tower, a desk fan on its base, a pinwheel of pitched vanes lying flat."""
    kind = str(rng.choice(["propeller", "windmill", "desk", "pinwheel"]))
    blades, hub = int(rng.integers(2, 7)), float(rng.uniform(0.05, 0.15))
    length, width = float(rng.uniform(0.4, 0.9)), float(rng.uniform(0.06, 0.25))
    pitch = math.radians(float(rng.uniform(10.0, 45.0)))
    if kind in ("propeller", "pinwheel"):  # the rotor's axis straight up
        axis, centre, parts = np.array([0.0, 0.0, 1.0]), np.array([0.0, 0.0, hub]), []
        parts.append(_centred_at({"shape": "cylinder", "dims": [hub, hub * 1.5]}, centre))
    else:  # the rotor's axis level, at the top of a tower (windmill) or a short neck on a disc (desk)
        turn = float(rng.uniform(0, 2 * np.pi))
        axis = np.array([math.cos(turn), abs(math.sin(turn)), 0.0])
        height = length + hub + float(rng.uniform(0.05, 0.4))
        centre = np.array([0.0, 0.0, height])
        if kind == "windmill":
            base = float(rng.uniform(0.15, 0.35))
            parts = [_set_down({"shape": "cone", "dims": [base, base * 0.5, height - hub]})]
        else:
            foot = float(rng.uniform(0.15, 0.3))
            parts = [_set_down({"shape": "cylinder", "dims": [foot, 0.04]})]
            parts.append(_rod((0.0, 0.0, 0.04), centre, float(rng.uniform(0.03, 0.06))))
        parts.append(_rod(centre - hub * axis, centre + hub * axis, hub))
    side = _unit(np.cross(axis, [0.0, 0.0, 1.0]) if abs(axis[2]) < 0.9 else np.array([1.0, 0.0, 0.0]))
    start = float(rng.uniform(0.0, 2 * np.pi))
    blade_width = width * (2.0 if kind == "pinwheel" else 1.0)
    for k in range(blades):
        angle = start + 2 * np.pi * k / blades
        radial = math.cos(angle) * side + math.sin(angle) * np.cross(axis, side)
        tangent = np.cross(axis, radial)
        across = math.cos(pitch) * tangent + math.sin(pitch) * axis  # the blade's face turned by its pitch
        parts.append(_slab(centre + radial * (hub + length / 2), radial, across, length, blade_width, 0.015))
    return kind, parts


def _strip_along(path: np.ndarray, across, width: float, thickness: float) -> list[dict]:
    """A band `width` wide along `across` whose midline is the polyline `path` [N,3]: one thin slab a segment,
    overlapping at the joints."""
    return [
        _slab((a + b) / 2, b - a, across, float(np.linalg.norm(b - a)) + thickness, width, thickness)
        for a, b in zip(path[:-1], path[1:])
    ]


def _ribbon_parts(rng: np.random.Generator) -> tuple[str, list[dict]]:
    """Thin bands: a wavy band standing on its edge, a band twisting as it rises, a scroll curled into a spiral, a
    band lying on its face that rises off the ground in a hump between its two ends."""
    kind = str(rng.choice(["wave", "twist", "scroll", "arching"]))
    thickness = float(rng.uniform(0.015, 0.04))
    if kind == "wave":
        length, amplitude = float(rng.uniform(1.2, 2.4)), float(rng.uniform(0.1, 0.45))
        x = np.linspace(-length / 2, length / 2, 24)
        y = amplitude * np.sin(2 * np.pi * float(rng.uniform(0.5, 2.0)) * x / length + rng.uniform(0, 2 * np.pi))
        height = float(rng.uniform(0.2, 0.8))
        return kind, _strip_along(np.stack([x, y, np.full_like(x, height / 2)], axis=1), _UP, height, thickness)
    if kind == "scroll":
        turns, outer = float(rng.uniform(1.0, 2.5)), float(rng.uniform(0.3, 0.7))
        angle = np.linspace(0.0, 2 * np.pi * turns, int(24 * turns))
        radius = outer * (0.25 + 0.75 * angle / angle[-1])
        height = float(rng.uniform(0.2, 0.9))
        path = np.stack([radius * np.cos(angle), radius * np.sin(angle), np.full_like(angle, height / 2)], axis=1)
        return kind, _strip_along(path, _UP, height, thickness)
    if kind == "twist":  # level slabs stacked, each turned a little further about the vertical
        height, width = float(rng.uniform(0.8, 1.6)), float(rng.uniform(0.25, 0.6))
        total, count = math.radians(float(rng.uniform(90.0, 360.0))), 20
        step, start = height / count, float(rng.uniform(0, 2 * np.pi))
        parts = []
        for k in range(count):
            angle = start + total * k / (count - 1)
            along = (math.cos(angle), math.sin(angle), 0.0)
            parts.append(_slab((0.0, 0.0, (k + 0.5) * step), _UP, along, step * 1.1, width, thickness))
        return kind, parts
    # arching: a band lying on its face rising off the ground in a hump between its two ends
    length, width = float(rng.uniform(1.0, 2.2)), float(rng.uniform(0.15, 0.5))
    rise = float(rng.uniform(0.2, 0.6))
    x = np.linspace(-length / 2, length / 2, 20)
    z = rise * np.sin(np.pi * (x + length / 2) / length) ** 2 + thickness / 2
    return kind, _strip_along(np.stack([x, np.zeros_like(x), z], axis=1), (0.0, 1.0, 0.0), width, thickness)


def _scatter_parts(rng: np.random.Generator) -> tuple[str, list[dict]]:
    """Many small separate things on the ground, each casting its own shadow: a scatter of pebbles, skittles set up in
    a triangle, toy blocks strewn about."""
    kind = str(rng.choice(["pebbles", "skittles", "blocks"]))
    parts, spread = [], float(rng.uniform(0.5, 1.1))
    if kind == "skittles":  # rows of one, two, three... bottle shapes: a body and a head
        rows, gap = int(rng.integers(2, 5)), float(rng.uniform(0.2, 0.4))
        body, height = float(rng.uniform(0.04, 0.09)), float(rng.uniform(0.25, 0.6))
        for row in range(rows):
            for k in range(row + 1):
                xy = ((k - row / 2) * gap, row * gap * 0.87)
                parts.append(_set_down({"shape": "cone", "dims": [body, body * 0.5, height * 0.7]}, 0.0, xy))
                parts.append(_set_down({"shape": "sphere", "dims": [body * 0.7, 1.3]}, height * 0.68, xy))
        return kind, parts
    count = int(rng.integers(5, 14))
    for _ in range(count):
        radius, angle = spread * math.sqrt(float(rng.uniform())), float(rng.uniform(0, 2 * np.pi))
        xy = (radius * math.cos(angle), radius * math.sin(angle))
        if kind == "pebbles":
            part = {"shape": "sphere", "dims": [float(rng.uniform(0.05, 0.18)), float(rng.uniform(0.35, 0.9))]}
        else:
            part = {"shape": "box", "dims": rng.uniform(0.08, 0.3, size=3).tolist()}
            part["rotation_deg"] = [0.0, 0.0, float(rng.uniform(0, 360))]
        parts.append(_set_down(part, 0.0, xy))
    return kind, parts


def _cage_parts(rng: np.random.Generator) -> tuple[str, list[dict]]:
    """Thin bars round an enclosure, light between them: a round bird cage (a floor, upright bars, hoops, a dome of
    half-hoops), a wire basket flaring towards its rim, a square crate of wire bars, a lantern of corner posts under a
    roof."""
    kind = str(rng.choice(["birdcage", "basket", "crate", "lantern"]))
    bar = float(rng.uniform(0.008, 0.025))
    if kind in ("birdcage", "basket"):
        radius, height = float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.6, 1.5))
        rim = radius * (float(rng.uniform(1.2, 1.6)) if kind == "basket" else 1.0)
        floor = float(rng.uniform(0.03, 0.08))
        parts = [_set_down({"shape": "cylinder", "dims": [radius * (1.08 if kind == "birdcage" else 1.0), floor]})]
        count, start = int(rng.integers(8, 21)), float(rng.uniform(0, 2 * np.pi))
        for k in range(count):
            angle = start + 2 * np.pi * k / count
            out = np.array([math.cos(angle), math.sin(angle), 0.0])
            parts.append(_rod(out * radius + (0.0, 0.0, floor / 2), out * rim + (0.0, 0.0, height), bar))
        hoops = [height] + ([float(rng.uniform(0.3, 0.7)) * height] if rng.uniform() < 0.6 else [])
        for z in hoops:
            hoop_radius = radius + (rim - radius) * (z - floor / 2) / (height - floor / 2)
            parts.append(_centred_at({"shape": "torus", "dims": [hoop_radius, bar * 1.3]}, (0.0, 0.0, z)))
        if kind == "birdcage":  # half-hoops crossing over the top, a ring to hang it by
            dome, t = float(rng.uniform(0.3, 1.0)) * radius, np.linspace(0.0, np.pi, 25)
            arcs = int(rng.integers(2, 5))
            for k in range(arcs):  # spread evenly over a half turn (each half-hoop spans both sides): none coincide
                angle = start + np.pi * k / arcs
                x, y = radius * np.cos(t) * math.cos(angle), radius * np.cos(t) * math.sin(angle)
                parts.append(_wire_in_place(bar, np.stack([x, y, height + dome * np.sin(t)], axis=1)))
            hook = float(rng.uniform(0.04, 0.1))
            ring = {"shape": "torus", "dims": [hook, bar], "rotation_deg": [90.0, 0.0, 0.0]}
            parts.append(_centred_at(ring, (0.0, 0.0, height + dome + hook)))
        return kind, parts
    if kind == "crate":  # the twelve edges of a box, wire bars across its sides at a spacing, an open or barred top
        size = rng.uniform((0.6, 0.4, 0.4), (1.4, 1.0, 1.0))
        low, high = np.array([-size[0] / 2, -size[1] / 2, 0.0]), np.array([size[0] / 2, size[1] / 2, size[2]])
        corners = _box_corners(low, high)
        parts = [
            _rod(corners[i], corners[j], bar * 1.6)
            for i in range(8)
            for j in range(i + 1, 8)
            if np.count_nonzero(corners[i] != corners[j]) == 1
        ]
        spacing, barred_top = float(rng.uniform(0.08, 0.18)), rng.uniform() < 0.5
        for axis in (0, 1):  # upright bars on the two faces across x, then the two across y (and top bars along x)
            positions = np.arange(low[axis] + spacing, high[axis] - spacing / 2, spacing)
            for position in positions:
                for side in (low[1 - axis], high[1 - axis]):
                    point = np.zeros(3)
                    point[axis], point[1 - axis] = position, side
                    parts.append(_rod(point, point + (0.0, 0.0, size[2]), bar))
                if barred_top and axis == 1:
                    parts.append(_rod((low[0], position, size[2]), (high[0], position, size[2]), bar))
        return kind, parts
    # lantern: a base plate, four corner posts, a frame round the top, a round roof, a candle, a ring on top
    side, height = float(rng.uniform(0.25, 0.6)), float(rng.uniform(0.5, 1.2))
    plate = float(rng.uniform(0.03, 0.06))
    parts = [_set_down({"shape": "box", "dims": [side * 1.15, side * 1.15, plate]})]
    half, post = side / 2, bar * 1.8
    corners = [np.array([sx * half, sy * half, 0.0]) for sx, sy in ((1, 1), (1, -1), (-1, -1), (-1, 1))]
    for k, corner in enumerate(corners):
        parts.append(_rod(corner + (0.0, 0.0, plate), corner + (0.0, 0.0, height), post))
        parts.append(_rod(corner + (0.0, 0.0, height), corners[(k + 1) % 4] + (0.0, 0.0, height), post))
    roof = float(rng.uniform(0.15, 0.4))
    parts.append(_set_down({"shape": "cone", "dims": [side * 0.85, 0.0, roof]}, height))
    parts.append(_set_down({"shape": "cylinder", "dims": [side * 0.12, height * float(rng.uniform(0.2, 0.5))]}, plate))
    ring = {"shape": "torus", "dims": [float(rng.uniform(0.04, 0.09)), bar], "rotation_deg": [90.0, 0.0, 0.0]}
    parts.append(_set_down(ring, height + roof - 0.01))
    return kind, parts


def _playground_parts(rng: np.random.Generator) -> tuple[str, list[dict]]:
    """Play frames of pipes and ropes: a swing set (A-frame ends, a top bar, ropes down to seats, some of them swung
    out), monkey bars over two end ladders, a climbing dome of crossing arcs and hoops, a slide (a ladder up to a
    platform on posts, a chute down the other side)."""
    kind = str(rng.choice(["swing", "monkeybars", "dome", "slide"]))
    pipe = float(rng.uniform(0.02, 0.045))
    if kind == "swing":
        length, height = float(rng.uniform(1.2, 2.4)), float(rng.uniform(1.0, 1.8))
        splay = float(rng.uniform(0.25, 0.5)) * height
        parts = []
        for x in (-length / 2, length / 2):
            parts += [_rod((x, sign * splay, 0.0), (x, 0.0, height), pipe) for sign in (-1, 1)]
        parts.append(_rod((-length / 2 - 2 * pipe, 0.0, height), (length / 2 + 2 * pipe, 0.0, height), pipe * 1.2))
        seats, rope = int(rng.integers(1, 4)), float(rng.uniform(0.006, 0.015))
        slot = length / seats
        for k in range(seats):
            x, seat = -length / 2 + (k + 0.5) * slot, float(rng.uniform(0.35, 0.7)) * slot
            drop = height - float(rng.uniform(0.25, 0.5))
            swung = math.radians(float(rng.choice([0.0, rng.uniform(-40.0, 40.0)])))
            bottom = np.array([0.0, drop * math.sin(swung), height - drop * math.cos(swung)])
            for dx in (-seat / 2, seat / 2):
                parts.append(_rod((x + dx, 0.0, height), bottom + (x + dx, 0.0, 0.0), rope))
            parts.append(_slab(bottom + (x, 0.0, -0.015), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), seat * 1.1, 0.15, 0.03))
        return kind, parts
    if kind == "monkeybars":  # two rails with rungs between, on two ladders of posts and rungs at the ends
        length, width = float(rng.uniform(1.2, 2.4)), float(rng.uniform(0.35, 0.7))
        height = float(rng.uniform(0.9, 1.6))
        rungs = int(length / float(rng.uniform(0.15, 0.3)))
        parts = _ladder_rods(
            (-length / 2, 0.0, height), (length / 2, 0.0, height), width, rungs, pipe, pipe * 0.7, side=(0.0, 1.0, 0.0)
        )
        steps = int(rng.integers(2, 6))
        for x in (-length / 2, length / 2):
            parts += _ladder_rods(
                (x, 0.0, 0.0), (x, 0.0, height), width, steps, pipe * 1.2, pipe * 0.7, side=(0.0, 1.0, 0.0)
            )
        return kind, parts
    if kind == "dome":  # half-circle arcs through the top, hoops round it at a few heights, a ring on the ground
        radius, t = float(rng.uniform(0.5, 1.0)), np.linspace(0.0, np.pi, 33)
        arcs, start = int(rng.integers(3, 7)), float(rng.uniform(0, np.pi))
        parts = []
        for k in range(arcs):
            angle = start + np.pi * k / arcs
            x, y = radius * np.cos(t) * math.cos(angle), radius * np.cos(t) * math.sin(angle)
            parts.append(_wire_in_place(pipe, np.stack([x, y, pipe + radius * np.sin(t)], axis=1)))
        latitudes = [0.0, *np.sort(rng.uniform(15.0, 65.0, size=int(rng.integers(1, 4))))]
        for latitude in np.radians(latitudes):
            hoop = {"shape": "torus", "dims": [radius * math.cos(latitude), pipe]}
            parts.append(_centred_at(hoop, (0.0, 0.0, pipe + radius * math.sin(latitude))))
        return kind, parts
    # slide: a platform on four posts, a ladder up to it on one side and a chute with rails down the other
    height, side = float(rng.uniform(0.6, 1.2)), float(rng.uniform(0.3, 0.5))
    climb, run = float(rng.uniform(0.2, 0.5)) * height, float(rng.uniform(1.0, 1.8)) * height
    parts = [_block((-side / 2, -side / 2, height - 0.04), (side / 2, side / 2, height))]
    for sx, sy in ((1, 1), (1, -1), (-1, 1), (-1, -1)):
        parts.append(_rod((sx * side / 2, sy * side / 2, 0.0), (sx * side / 2, sy * side / 2, height), pipe))
    parts += _ladder_rods(
        (-side / 2 - climb, 0.0, 0.0),
        (-side / 2, 0.0, height),
        side * 0.8,
        int(rng.integers(3, 7)),
        pipe,
        pipe * 0.7,
        side=(0.0, 1.0, 0.0),
    )
    top, foot = np.array([side / 2, 0.0, height - 0.02]), np.array([side / 2 + run, 0.0, 0.05])
    parts.append(
        _slab((top + foot) / 2, foot - top, (0.0, 1.0, 0.0), float(np.linalg.norm(foot - top)), side * 0.8, 0.02)
    )
    for sy in (-1, 1):
        lift = np.array([0.0, sy * side * 0.4, 0.08])
        parts.append(_rod(top + lift, foot + lift, pipe * 0.6))
    return kind, parts


def _strings_across(low: float, high: float, count: int, radius: float) -> tuple[np.ndarray, float]:
    """`count` strings spread evenly from `low` to `high`: their positions, and `radius` made no thicker than a quarter
    of their spacing, so that light passes between each two (a gap of at least half the spacing)."""
    positions = np.linspace(low, high, count)
    return positions, min(radius, (high - low) / (count - 1) / 4)


def _strung_parts(rng: np.random.Generator) -> tuple[str, list[dict]]:
    """Frames strung with thin strings, light between them: a harp (a pillar, a slanting sound box, a curved neck,
    strings falling in length between them), a lyre (two curving arms over a sound box, a crossbar, strings), a strung
    bow lying flat or propped up on its tips, a weaving frame leaning back on a prop with its threads half woven."""
    kind = str(rng.choice(["harp", "lyre", "bow", "loom"]))
    string = float(rng.uniform(0.006, 0.014))
    if kind == "harp":
        height, depth = float(rng.uniform(1.0, 1.8)), float(rng.uniform(0.4, 0.8))
        shoulder = height * float(rng.uniform(0.75, 0.9))
        parts = [_block((-0.06, -0.08, 0.0), (depth * 0.3, 0.08, 0.08))]  # the foot joining pillar and sound box
        parts.append(_rod((0.0, 0.0, 0.04), (0.0, 0.0, height), float(rng.uniform(0.025, 0.05))))
        box_foot, box_top = np.array([0.1, 0.0, 0.08]), np.array([depth, 0.0, shoulder])
        parts.append(
            _slab(
                (box_foot + box_top) / 2,
                box_top - box_foot,
                (0.0, 1.0, 0.0),
                float(np.linalg.norm(box_top - box_foot)),
                float(rng.uniform(0.1, 0.2)),
                float(rng.uniform(0.05, 0.12)),
            )
        )
        x = np.linspace(0.0, depth, 20)
        neck_z = shoulder + (height - shoulder) * (1 - x / depth) + 0.04 * np.sin(np.pi * x / depth)
        parts.append(_wire_in_place(float(rng.uniform(0.02, 0.04)), np.stack([x, np.zeros_like(x), neck_z], axis=1)))
        positions, string = _strings_across(0.12, depth - 0.06, int(rng.integers(8, 21)), string)
        for x_string in positions:
            top = float(np.interp(x_string, x, neck_z))
            bottom = 0.08 + (x_string - 0.1) / (depth - 0.1) * (shoulder - 0.08)
            if top - bottom > 0.05:
                parts.append(_rod((x_string, 0.0, bottom), (x_string, 0.0, top), string))
        return kind, parts
    if kind == "lyre":
        width, box = float(rng.uniform(0.3, 0.6)), float(rng.uniform(0.15, 0.35))
        reach, spread = float(rng.uniform(0.5, 1.1)), float(rng.uniform(0.05, 0.25))
        parts = [_block((-width / 2, -0.06, 0.0), (width / 2, 0.06, box))]
        t = np.linspace(0.0, 1.0, 16)
        arm = float(rng.uniform(0.02, 0.04))
        for sign in (-1, 1):
            x = sign * (width / 2 - arm + spread * np.sin(np.pi * t) + 0.1 * spread * t)
            parts.append(_wire_in_place(arm, np.stack([x, np.zeros_like(t), box - arm + reach * t], axis=1)))
        bar_z = box + reach * 0.9
        parts.append(_rod((-width / 2 - 0.15 * spread, 0.0, bar_z), (width / 2 + 0.15 * spread, 0.0, bar_z), arm))
        positions, string = _strings_across(-width * 0.35, width * 0.35, int(rng.integers(4, 11)), string)
        for x_string in positions:
            parts.append(_rod((x_string, 0.0, box), (x_string, 0.0, bar_z), string))
        return kind, parts
    if kind == "bow":  # the limb bulging away from the string, in a plane tilted up from the ground by `tilt`
        chord, limb = float(rng.uniform(1.0, 1.8)), float(rng.uniform(0.015, 0.03))
        bulge, tilt = float(rng.uniform(0.12, 0.3)) * chord, math.radians(float(rng.choice([0.0, rng.uniform(30, 80)])))
        u = np.linspace(-1.0, 1.0, 25)
        sag = bulge * (1 - u**2)
        path = np.stack([chord / 2 * u, sag * math.cos(tilt), sag * math.sin(tilt)], axis=1)
        parts = [_wire_in_place(limb, path), _rod((-chord / 2, 0.0, 0.0), (chord / 2, 0.0, 0.0), string * 0.8)]
        if rng.uniform() < 0.5:  # an arrow across the string's middle
            arrow = float(rng.uniform(0.6, 0.9)) * chord
            direction = np.array([0.0, math.cos(tilt), math.sin(tilt)])
            parts.append(_rod(-0.05 * arrow * direction, 0.95 * arrow * direction, string * 1.2))
        return kind, parts
    # loom: a frame of four bars in a plane leaning back by `lean`, a prop behind it, threads between its top and
    # bottom bars, the lower part of them woven into a band
    width, height = float(rng.uniform(0.6, 1.2)), float(rng.uniform(0.6, 1.2))
    lean, beam = math.radians(float(rng.uniform(10.0, 35.0))), float(rng.uniform(0.02, 0.04))
    up = np.array([0.0, math.sin(lean), math.cos(lean)])

    def at(x: float, s: float) -> np.ndarray:  # a point of the frame's plane: x across, s up it
        return np.array([x, 0.0, beam]) + s * up

    parts = [
        _rod(at(-width / 2, 0.0), at(width / 2, 0.0), beam),
        _rod(at(-width / 2, height), at(width / 2, height), beam),
        *(_rod(at(x, 0.0), at(x, height), beam) for x in (-width / 2, width / 2)),
    ]
    top = at(0.0, height)
    prop_angle = math.radians(float(rng.uniform(20.0, 40.0)))
    parts.append(_rod(top, (0.0, top[1] + top[2] * math.tan(prop_angle), 0.0), beam))
    positions, string = _strings_across(-width / 2 + 0.05, width / 2 - 0.05, int(rng.integers(10, 31)), string)
    parts += [_rod(at(x, 0.0), at(x, height), string) for x in positions]
    woven = float(rng.uniform(0.1, 0.4)) * height
    parts.append(_slab(at(0.0, woven / 2 + beam), (1.0, 0.0, 0.0), up, width - 2 * beam, woven, 0.02))
    return kind, parts


def _tool_head(rng: np.random.Generator, tool: str, foot, along, across) -> list[dict]:
    """The head of a long-handled tool at the handle's `foot` end: the handle runs from there along the unit vector
    `along`; `across` is level and perpendicular to it."""
    foot, along, across = (np.asarray(v, dtype=np.float64) for v in (foot, along, across))
    normal = np.cross(along, across)  # perpendicular to both: down from a handle leaning up is -normal
    tine = float(rng.uniform(0.006, 0.014))
    if tool == "rake":  # a bar across the foot, short tines off it towards the ground
        width, length = float(rng.uniform(0.3, 0.6)), float(rng.uniform(0.06, 0.15))
        parts = [_rod(foot - across * width / 2, foot + across * width / 2, float(rng.uniform(0.015, 0.03)))]
        for offset in np.linspace(-width / 2, width / 2, int(rng.integers(6, 15))):
            start = foot + offset * across
            parts.append(_rod(start, start - normal * length, tine))
        return parts
    if tool == "broom":  # a block of bristles across the foot
        width, depth = float(rng.uniform(0.25, 0.5)), float(rng.uniform(0.1, 0.2))
        return [_slab(foot - normal * depth / 2, across, normal, width, depth, float(rng.uniform(0.04, 0.09)))]
    if tool == "fork":  # a crossbar and three to five long tines carrying on past the foot
        width, length = float(rng.uniform(0.15, 0.3)), float(rng.uniform(0.25, 0.45))
        parts = [_rod(foot - across * width / 2, foot + across * width / 2, tine * 1.5)]
        for offset in np.linspace(-width / 2, width / 2, int(rng.integers(3, 6))):
            start = foot + offset * across
            parts.append(_rod(start, start - along * length, tine * 1.3))
        return parts
    # spade: a flat blade carrying on past the foot
    length, width = float(rng.uniform(0.25, 0.4)), float(rng.uniform(0.15, 0.25))
    return [_slab(foot - along * length / 2, along, across, length, width, 0.012)]


def _tool_parts(rng: np.random.Generator) -> tuple[str, list[dict]]:
    """Long-handled tools (a rake, a broom, a pitchfork, a spade) leaning on a crate, propped on a log or lying on the
    ground: long thin handles at a slant, their heads' tines and blades at the ground."""
    tool = str(rng.choice(["rake", "broom", "fork", "spade"]))
    support = str(rng.choice(["crate", "log", "lying"]))
    length, handle = float(rng.uniform(1.0, 1.8)), float(rng.uniform(0.012, 0.03))
    slant = {"crate": rng.uniform(25.0, 60.0), "log": rng.uniform(8.0, 18.0), "lying": 0.0}[support]
    slant = math.radians(float(slant))
    along, across = np.array([math.cos(slant), 0.0, math.sin(slant)]), np.array([0.0, 1.0, 0.0])
    if support == "lying" and rng.uniform() < 0.5:
        across = -across  # tines and blades up rather than down
    parts = [_rod((0.0, 0.0, 0.0), along * length, handle)]
    if tool == "spade":  # a T-grip at the top
        parts.append(_rod(along * length - across * 0.07, along * length + across * 0.07, handle))
    parts += _tool_head(rng, tool, (0.0, 0.0, 0.0), along, across)
    ground = _lowest(parts)  # the head's lowest point
    rest = float(rng.uniform(0.55, 0.85)) * length  # where along the handle it lies on its support
    normal = np.cross(along, across)  # perpendicular to the handle, as in `_tool_head`
    if support == "crate":  # a box whose near top edge the handle rests on
        edge = along * rest - normal * handle
        crate = rng.uniform((0.3, 0.3), (0.7, 0.8))
        parts.append(_block((edge[0], -crate[1] / 2, ground), (edge[0] + crate[0], crate[1] / 2, edge[2])))
    elif support == "log":  # a log lying across, under the handle, its bottom at the head's lowest point
        radius = (rest * math.sin(slant) - handle - ground) / (1.0 + abs(normal[2]))
        centre = along * rest - np.sign(normal[2]) * normal * (handle + radius)
        span = float(rng.uniform(0.4, 0.9))
        parts.append(_rod(centre - (0.0, span / 2, 0.0), centre + (0.0, span / 2, 0.0), max(radius, 0.03)))
    return f"{tool}+{support}", parts


_THIN_BUILDERS = {
    "legged": _legged_parts,
    "pole": _pole_parts,
    "ring": _ring_parts,
    "slats": _slats_parts,
    "bridge": _bridge_parts,
    "ladder": _ladder_parts,
    "lathe": _lathe_parts,
    "frame": _frame_parts,
    "figure": _figure_parts,
    "wire": _wire_parts,
    "glyph": _glyph_parts,
    "shelf": _shelf_parts,
    "sticks": _sticks_parts,
    "cart": _cart_parts,
    "tower": _tower_parts,
    "plant": _plant_parts,
    "panel": _panel_parts,
    "spiky": _spiky_parts,
    "fan": _fan_parts,
    "ribbon": _ribbon_parts,
    "scatter": _scatter_parts,
    "cage": _cage_parts,
    "playground": _playground_parts,
    "strung": _strung_parts,
    "tool": _tool_parts,
}


def _lowest(parts: list[dict]) -> float:
    """The lowest z of any of the parts."""
    return min(float(part_vertices(part)[0][:, 2].min()) for part in parts)


def _rest_on_ground(parts: list[dict]) -> list[dict]:
    """The parts moved up or down together so that the object's lowest point is on z = 0."""
    low = _lowest(parts)
    return [dict(part, offset=[part["offset"][0], part["offset"][1], part["offset"][2] - low]) for part in parts]


def procedural_recipe(rng: np.random.Generator, families=DEFAULT_FAMILIES) -> dict:
    """A random object of one of `families` (FAMILY_DESCRIPTIONS) built from primitives (boxes, cylinders, cones,
    ellipsoids, tori, extruded polygons, tubes), with 1-3 materials (plain, checker or noise). `kind` names the
    variant within the family (e.g. chair / stool / table of `legged`)."""
    family = draw_family(rng, families)
    materials = [_random_material(rng) for _ in range(int(rng.integers(1, 4)))]

    def material_index() -> int:
        return int(rng.integers(len(materials)))

    parts, composition, kind = [], family, family
    if family in _THIN_BUILDERS:
        kind, parts = _THIN_BUILDERS[family](rng)
        parts = _rest_on_ground(parts)
    elif composition == "single":
        part = _random_primitive(rng)
        if part["shape"] == "torus" and rng.uniform() < 0.5:
            part["rotation_deg"] = [90.0, 0.0, 0.0]  # standing ring
        parts.append(_set_down(part))
    elif composition == "stack":
        base_z = 0.0
        for _ in range(int(rng.integers(2, 5))):
            part = _random_primitive(rng, shapes=("box", "cylinder", "cone", "sphere", "prism"))
            part["rotation_deg"] = [0.0, 0.0, float(rng.uniform(0, 360))]
            part = _set_down(part, base_z, rng.uniform(-0.15, 0.15, size=2))
            parts.append(part)
            base_z = _top(part) - 0.02
    elif composition == "leaning":
        base = _set_down(_random_primitive(rng, shapes=("box", "cylinder", "prism")))
        leaning = {"shape": str(rng.choice(["box", "cylinder"])), "dims": []}
        leaning["dims"] = [0.2, 0.2, 2.2] if leaning["shape"] == "box" else [0.12, 2.2]
        leaning["dims"] = [float(v * rng.uniform(0.6, 1.4)) for v in leaning["dims"]]
        tilt = float(rng.uniform(15, 40)) * rng.choice([-1.0, 1.0])
        leaning["rotation_deg"] = [0.0, tilt, float(rng.uniform(-30, 30))]
        parts += [base, _set_down(leaning, 0.0, (-math.copysign(0.5, tilt), 0.0))]
    elif composition == "cluster":
        for _ in range(int(rng.integers(2, 5))):
            part = _random_primitive(rng)
            part["rotation_deg"] = [0.0, 0.0, float(rng.uniform(0, 360))]
            parts.append(_set_down(part, 0.0, rng.uniform(-1.0, 1.0, size=2)))
    elif composition == "table":
        height = float(rng.uniform(0.6, 1.4))
        width, depth, thickness = (
            float(rng.uniform(1.0, 2.0)),
            float(rng.uniform(0.6, 1.6)),
            float(rng.uniform(0.06, 0.2)),
        )
        top_shape = str(rng.choice(["box", "cylinder"]))
        top = {"shape": top_shape, "dims": [width, depth, thickness] if top_shape == "box" else [width / 2, thickness]}
        parts.append(_set_down(top, height))
        leg_radius = float(rng.uniform(0.03, 0.1))
        if rng.uniform() < 0.2:  # pedestal
            parts.append(_set_down({"shape": "cylinder", "dims": [leg_radius * 2.5, height]}))
        else:
            inset = 0.8 if top_shape == "box" else 0.55
            for sx, sy in ((1, 1), (1, -1), (-1, 1), (-1, -1)):
                leg = {"shape": str(rng.choice(["box", "cylinder"])), "dims": []}
                leg["dims"] = (
                    [2 * leg_radius, 2 * leg_radius, height] if leg["shape"] == "box" else [leg_radius, height]
                )
                parts.append(_set_down(leg, 0.0, (sx * inset * width / 2, sy * inset * depth / 2)))
    else:  # arch: two pillars and a lintel
        height, span = float(rng.uniform(0.8, 1.8)), float(rng.uniform(0.6, 1.6))
        pillar = _random_primitive(rng, shapes=("box", "cylinder"))
        pillar["dims"] = [0.25, 0.25, height] if pillar["shape"] == "box" else [0.13, height]
        parts += [_set_down(pillar, 0.0, (-span / 2, 0.0)), _set_down(pillar, 0.0, (span / 2, 0.0))]
        lintel = {"shape": "box", "dims": [span + 0.5, 0.35, float(rng.uniform(0.12, 0.35))]}
        parts.append(_set_down(lintel, height - 0.01))
    for part in parts:
        part["material"] = material_index()
    return {"family": family, "kind": kind, "parts": parts, "materials": materials}


# --------------------------------------------------------------------------------------------------------------------
# 4. Images: from the two renders to the three files.
# --------------------------------------------------------------------------------------------------------------------


def mask_from_alpha(alpha: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Binary mask (bool HxW) from the object render's alpha in [0, 1]."""
    return np.asarray(alpha) >= threshold


def object_image_on_white(rgba: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """uint8 HxWx3: the object render (straight alpha, float in [0, 1]) over white, every pixel outside the mask WHITE
    (docs/design.md §8)."""
    rgb, alpha = rgba[..., :3], rgba[..., 3:4]
    image = rgb * alpha + (1.0 - alpha)
    image[~mask] = 1.0
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def shadow_map_from_catcher(catcher: np.ndarray, mask: np.ndarray, region=None) -> np.ndarray:
    """float32 HxW in [0, 1], 1 = full shadow: 1 − (Cycles' shadow-catcher pass = E_with / E_without, channel mean),
    clamped, zero inside the mask, where the pass is not finite and outside `region` (col0, row0, col1, row1), the
    only pixels rendered."""
    ratio = np.asarray(catcher, dtype=np.float32)
    ratio = ratio[..., :3].mean(axis=-1) if ratio.ndim == 3 else ratio
    shadow = np.clip(1.0 - ratio, 0.0, 1.0)
    shadow[~np.isfinite(shadow) | mask] = 0.0
    if region is not None:
        inside = np.zeros_like(mask)
        inside[region[1] : region[3], region[0] : region[2]] = True
        shadow[~inside] = 0.0
    return shadow.astype(np.float32)


def shadow_to_image(shadow: np.ndarray, bits: int = 16) -> Image.Image:
    """Gray PNG image of a shadow map: 16-bit (mode I;16, read back as value / 65535) or 8-bit (L)."""
    if bits == 16:
        return Image.fromarray(np.round(np.clip(shadow, 0.0, 1.0) * 65535.0).astype(np.uint16))
    return Image.fromarray(np.round(np.clip(shadow, 0.0, 1.0) * 255.0).astype(np.uint8))


def load_gray(path) -> np.ndarray:
    """A mask or shadow PNG (8- or 16-bit) -> float32 HxW in [0, 1]."""
    with Image.open(path) as image:
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            return np.asarray(image, dtype=np.float32) / 65535.0
        return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


def composite(
    object_rgb: np.ndarray, mask: np.ndarray, shadow: np.ndarray, background, intensity: float = 1.0
) -> np.ndarray:
    """uint8 HxWx3: `background` darkened by clamp(intensity × shadow), the object pasted through its mask (the same rule
    as pipeline_shadow.composite)."""
    background = np.broadcast_to(np.asarray(background, dtype=np.float32), object_rgb.shape)
    shadowed = background * (1.0 - np.clip(intensity * shadow, 0.0, 1.0))[..., None]
    mask = np.asarray(mask, dtype=np.float32)[..., None]
    return np.round(np.clip(object_rgb / 255.0 * mask + shadowed * (1.0 - mask), 0, 1) * 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------------------------------
# 5. The plan: every sample a pure function of (seed, index) and the arguments.
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class SampleSpec:
    index: int
    key: str
    split: str | None
    object_index: int
    object_id: str
    mesh_source: str  # "procedural" or the mesh's path relative to --meshes
    mesh_path: str | None  # None for a procedural object, built from `procedural_recipe(seed, object_index)`
    theta: float
    phi: float
    size: float
    track: str | None
    rotation_z_deg: float
    camera_distance: float
    camera_elevation_deg: float
    camera_azimuth_deg: float
    render_seed: int
    drop_tilt_deg: list = field(default_factory=lambda: [0.0, 0.0])
    lights: list | None = None  # several lights at once: [[theta, phi, size, relative power], ...]; else the one above
    family: str | None = None  # the procedural object's family (FAMILIES); None for a mesh

    def light_list(self) -> list[list[float]]:
        """[[theta, phi, size, relative power], ...]: the sample's lights (one, of power 1, unless a light set)."""
        return self.lights if self.lights is not None else [[self.theta, self.phi, self.size, 1.0]]


def sample_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), stream, int(index)])


def draw_light(rng: np.random.Generator, theta=None, phi=None, size=None) -> tuple[float, float, float]:
    """(theta, phi, size) from the paper's integer grids, each unless fixed by the caller."""
    drawn = (
        float(rng.integers(THETA_GRID_DEG[0], THETA_GRID_DEG[1] + 1)),
        float(rng.integers(PHI_GRID_DEG[0], PHI_GRID_DEG[1] + 1)),
        float(rng.integers(SIZE_GRID[0], SIZE_GRID[1] + 1)),
    )
    fixed = (theta, phi, size)
    return tuple(float(f) if f is not None else d for f, d in zip(fixed, drawn))


def draw_view(rng: np.random.Generator) -> dict:
    """Object rotation about z, camera distance and elevation, the drop's initial tilt; uniform in their ranges."""
    return {
        "rotation_z_deg": float(rng.uniform(0.0, 360.0)),
        "camera_distance": float(rng.uniform(*CAMERA_DISTANCE_RANGE)),
        "camera_elevation_deg": float(rng.uniform(*CAMERA_ELEVATION_RANGE_DEG)),
        "drop_tilt_deg": [float(v) for v in rng.uniform(-20.0, 20.0, size=2)],
    }


def mesh_root(meshes: Path) -> Path:
    """The folder --meshes' object ids are relative to: the folder itself, or a single mesh file's folder."""
    return meshes.parent if meshes.is_file() else meshes


def find_meshes(meshes: Path) -> list[Path]:
    """Every importable mesh file under the folder `meshes` (recursively), sorted by relative path; or the one mesh
    file `meshes` names."""
    if meshes.is_file():
        return [meshes] if meshes.suffix.lower() in MESH_IMPORTERS else []
    return sorted(
        (path for path in meshes.rglob("*") if path.is_file() and path.suffix.lower() in MESH_IMPORTERS),
        key=lambda path: path.relative_to(meshes).as_posix(),
    )


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


@dataclass
class ObjectSource:
    object_id: str
    mesh_source: str
    mesh_path: str | None = None
    family: str | None = None


def object_sources(args) -> list[ObjectSource]:
    """The objects of this dataset: the meshes under --meshes, or --num_objects procedural recipes."""
    if args.meshes is not None:
        mesh_dir = mesh_root(Path(args.meshes))
        meshes = find_meshes(Path(args.meshes))  # one file: itself, relative to its folder
        if args.num_objects is not None:
            meshes = meshes[: args.num_objects]
        return [
            ObjectSource(
                _slug(path.relative_to(mesh_dir).with_suffix("").as_posix()),
                path.relative_to(mesh_dir).as_posix(),
                str(path.resolve()),
            )
            for path in meshes
        ]
    count = args.num_objects if args.num_objects is not None else (args.num_samples if args.mode == "random" else 1)
    families = selected_families(args)
    return [  # the recipes themselves are drawn by the workers; the family is their first, cheap draw
        ObjectSource(f"proc_{k:06d}", PROCEDURAL_SOURCE, family=object_family(args.seed, k, families))
        for k in range(count)
    ]


def selected_families(args) -> tuple[str, ...]:
    """The families the procedural objects are drawn from (--families minus --exclude_families)."""
    return check_families(getattr(args, "families", None), getattr(args, "exclude_families", None) or ())


def object_family(seed: int, object_index: int, families=DEFAULT_FAMILIES) -> str:
    """The family of procedural object `object_index` (the same draw that object_recipe starts with)."""
    return draw_family(sample_rng(seed, _STREAM_OBJECT, object_index), families)


def object_recipe(seed: int, object_index: int, families=DEFAULT_FAMILIES) -> dict:
    """The procedural object `object_index` of a dataset with `seed`, drawn from `families` (the run's
    `.render/config.json` records them; null = DEFAULT_FAMILIES)."""
    return procedural_recipe(sample_rng(seed, _STREAM_OBJECT, object_index), families)


def test_objects(num_objects: int, test_fraction: float, seed: int) -> set[int]:
    """The object indices of the test split: a seeded choice of round(fraction × objects), at least one."""
    if test_fraction <= 0:
        return set()
    count = max(1, round(test_fraction * num_objects))
    if count >= num_objects:
        raise ValueError(
            f"`--test_fraction {test_fraction}` leaves no training object out of {num_objects}; lower it or add objects."
        )
    return {int(k) for k in np.random.default_rng([int(seed), _STREAM_SPLIT]).permutation(num_objects)[:count]}


def plan_samples(args, objects: list[ObjectSource]) -> list[SampleSpec]:
    """All samples of the dataset, in index order (shards and workers take subsets of it)."""
    test_set = test_objects(len(objects), args.test_fraction, args.seed)
    split_of = (lambda k: "test" if k in test_set else "train") if args.test_fraction > 0 else (lambda k: None)

    def spec(index, key, k, light, track, view):
        source = objects[k]
        light_set = None
        if isinstance(light[0], (list, tuple)):  # a light set: several lights in one sample
            light_set = [[float(t), float(p) % 360.0, float(z), float(w)] for t, p, z, w in light]
            light = (math.nan, math.nan, math.nan)
        render_seed = int(sample_rng(args.seed, _STREAM_SAMPLE, index).integers(0, 2**31 - 1))
        return SampleSpec(
            index=index,
            key=key,
            split=split_of(k),
            object_index=k,
            object_id=source.object_id,
            mesh_source=source.mesh_source,
            mesh_path=source.mesh_path,
            theta=light[0],
            phi=light[1] % 360.0,
            size=light[2],
            track=track,
            rotation_z_deg=view["rotation_z_deg"],
            camera_distance=view["camera_distance"],
            camera_elevation_deg=view["camera_elevation_deg"],
            camera_azimuth_deg=CAMERA_AZIMUTH_DEG,
            render_seed=render_seed,
            drop_tilt_deg=view["drop_tilt_deg"],
            lights=light_set,
            family=source.family,
        )

    specs = []
    if args.mode == "random":
        for index in range(args.num_samples):
            rng = sample_rng(args.seed, _STREAM_SAMPLE, index)
            rng.integers(0, 2**31 - 1)  # the render seed's draw
            light = draw_light(rng, args.theta, args.phi, args.size)
            specs.append(spec(index, f"{index:07d}", index % len(objects), light, None, draw_view(rng)))
        return specs
    # Per-object modes: each object keeps one pose and camera for all its lights, so that only the light varies.
    if args.mode == "tracks":
        jobs = [(name, TRACK_KEY_PREFIX[name], TRACK_LIGHTS[name]) for name in args.tracks]
    elif args.mode == "light_sets":
        jobs = [(None, "lights", args.light_sets)]
    else:
        jobs = [(None, "light", args.lights)]
    for track, prefix, lights in jobs:
        for k in range(len(objects)):
            view = draw_view(sample_rng(args.seed, _STREAM_VIEW, k))
            for j, light in enumerate(lights):
                specs.append(spec(len(specs), f"{prefix}_{k:05d}_{j:02d}", k, light, track, view))
    return specs


# --------------------------------------------------------------------------------------------------------------------
# 6. Output layouts. A sample is complete once its record is written (last, atomically); anything else is redone.
# --------------------------------------------------------------------------------------------------------------------


class OutputLayout:
    """`custom`: objects/, masks/, shadows/ (<key>.png) + metadata.json {key: metadata}, per-sample records in
    .render/samples/. `benchmark`: <key>.image.png, <key>.mask.png, <key>.shadow.png, <key>.metadata.json."""

    def __init__(self, root: Path, fmt: str):
        self.root, self.format = Path(root), fmt

    def files(self, key: str) -> dict[str, Path]:
        if self.format == "custom":
            return {
                name: self.root / folder / f"{key}.png"
                for name, folder in (("object", "objects"), ("mask", "masks"), ("shadow", "shadows"))
            }
        return {
            name: self.root / f"{key}.{suffix}.png"
            for name, suffix in (("object", "image"), ("mask", "mask"), ("shadow", "shadow"))
        }

    def light_shadow(self, key: str, light_index: int) -> Path:
        """One light's own map in a light-set sample (custom layout; written before the record)."""
        return self.root / "light_shadows" / f"{key}_{light_index}.png"

    def record(self, key: str) -> Path:
        if self.format == "custom":
            return self.root / STATE_DIR / "samples" / f"{key}.json"
        return self.root / f"{key}.metadata.json"

    def is_complete(self, key: str) -> bool:
        return self.record(key).is_file() and all(path.is_file() for path in self.files(key).values())

    def write(
        self,
        key: str,
        object_rgb: np.ndarray,
        mask: np.ndarray,
        shadow: np.ndarray,
        metadata: dict,
        shadow_bits: int,
        light_shadows: list | None = None,
    ) -> None:
        paths = self.files(key)
        for i, light_shadow in enumerate(light_shadows or []):
            image = shadow_to_image(light_shadow, shadow_bits)
            _atomic_write(self.light_shadow(key, i), lambda handle, image=image: image.save(handle, format="PNG"))
        images = {
            "object": Image.fromarray(object_rgb, "RGB"),
            "mask": Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), "L"),
            "shadow": shadow_to_image(shadow, shadow_bits),
        }
        for name, image in images.items():
            _atomic_write(paths[name], lambda handle, image=image: image.save(handle, format="PNG"))
        _atomic_write(self.record(key), lambda handle: handle.write(json.dumps(metadata, indent=1).encode()))

    def records(self) -> dict[str, dict]:
        """All complete samples' metadata, by key."""
        pattern = (
            (self.root / STATE_DIR / "samples").glob("*.json")
            if self.format == "custom"
            else self.root.glob("*.metadata.json")
        )
        found = {}
        for path in sorted(pattern):
            key = path.name[: -len(".json")] if self.format == "custom" else path.name[: -len(".metadata.json")]
            if self.is_complete(key):
                found[key] = json.loads(path.read_text())
        return found

    def finalize(self, tar: bool) -> int:
        """Writes metadata.json (custom) or the tar (benchmark, if asked) from the complete samples; returns their count."""
        records = self.records()
        if self.format == "custom" and records:  # one sample per line: readable, and small enough for 100k+ samples
            lines = (f"{json.dumps(key)}: {json.dumps(records[key], separators=(',', ':'))}" for key in sorted(records))
            text = "{\n" + ",\n".join(lines) + "\n}\n"
            _atomic_write(self.root / "metadata.json", lambda handle: handle.write(text.encode()))
        if tar and records:
            tar_path = self.tar_path()

            def write_tar(handle):
                with tarfile.open(fileobj=handle, mode="w") as archive:
                    for key in sorted(records):  # the files of one sample consecutive, as webdataset expects
                        paths = self.files(key)
                        for path in (paths["object"], paths["mask"], paths["shadow"], self.record(key)):
                            archive.add(path, arcname=path.name)

            _atomic_write(tar_path, write_tar)
        return len(records)

    def tar_path(self) -> Path:
        return self.root / f"{self.root.name}.tar"


def _atomic_write(path: Path, write) -> None:
    """Writes through a temporary file in the same folder and renames it, so that readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False)
    try:
        with handle:
            write(handle)
        os.replace(handle.name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(handle.name)
        raise


def split_roots(output_dir: Path, test_fraction: float) -> dict[str | None, Path]:
    if test_fraction > 0:
        return {"train": output_dir / "train", "test": output_dir / "test"}
    return {None: output_dir}


def sample_metadata(spec: SampleSpec, camera: dict, placement: dict, settings: dict) -> dict:
    """The record of one sample (see the README's metadata table)."""
    if spec.lights is not None:
        return _light_set_metadata(spec, camera, placement, settings)
    metadata = {
        "theta": spec.theta,
        "phi": spec.phi,
        "size": spec.size,
        "track": spec.track,
        "object_id": spec.object_id,
        "object_index": spec.object_index,  # procedural: object_recipe(seed, object_index, families) rebuilds it
        "mesh_source": spec.mesh_source,
        "family": spec.family,
        "split": spec.split,
        "seed": settings["seed"],
        "index": spec.index,
        "light": {
            "distance": LIGHT_DISTANCE,
            "position": light_position(spec.theta, spec.phi).tolist(),
            "shape": "square",
            "power_w": settings["light_power"],
        },
        "camera": camera,
        "object": placement,
        "render": {
            "engine": "CYCLES",
            "blender": settings.get("blender_version"),
            "spp": settings["spp"],
            "denoise": settings["denoise"],
            "ambient": settings["ambient"],
            "render_seed": spec.render_seed,
            "shadow_bits": settings["shadow_bits"],
            "shadow_map": "1 - E_with/E_without of the area light on the ground (ambient excluded), 0 inside the mask",
        },
    }
    return metadata


def _light_set_metadata(spec: SampleSpec, camera: dict, placement: dict, settings: dict) -> dict:
    """The record of a light-set sample: `lights` instead of one light, and NO top-level theta/phi/size, so that a
    training loader never mistakes it for a single-light sample."""
    metadata = sample_metadata(
        dataclass_replace(spec, lights=None, theta=0.0, phi=0.0, size=1.0), camera, placement, settings
    )
    for name in ("theta", "phi", "size", "light"):
        metadata.pop(name)
    metadata["lights"] = [
        {
            "theta": theta,
            "phi": phi,
            "size": size,
            "power": power,  # relative: this light emits power x power_w watts
            "power_w": power * settings["light_power"],
            "position": light_position(theta, phi).tolist(),
            "distance": LIGHT_DISTANCE,
            "shape": "square",
        }
        for theta, phi, size, power in spec.lights
    ]
    if settings.get("single_light_maps"):
        metadata["light_shadows"] = [f"light_shadows/{spec.key}_{i}.png" for i in range(len(spec.lights))]
    metadata["render"]["shadow_map"] = (
        "1 - E_with/E_without of all the lights together on the ground (ambient excluded), 0 inside the mask"
    )
    return metadata


# --------------------------------------------------------------------------------------------------------------------
# 7. Blender (imported only inside worker processes).
# --------------------------------------------------------------------------------------------------------------------


class MeshImportError(RuntimeError):
    """A mesh file that Blender could not turn into geometry; its samples are skipped and counted."""


@contextlib.contextmanager
def _quiet_stdout():
    """Blender prints from C code straight to fd 1; send it to /dev/null for the duration."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _matrix(bpy_mathutils, array: np.ndarray):
    return bpy_mathutils.Matrix([list(map(float, row)) for row in np.asarray(array)])


class BlenderRenderer:
    """One per worker process: owns bpy, renders SampleSpecs into arrays."""

    def __init__(self, settings: dict):
        with _quiet_stdout():
            import bpy
            import mathutils
        self.bpy, self.mathutils, self.settings = bpy, mathutils, settings
        self.tmp = Path(tempfile.mkdtemp(prefix="render_shadow_"))  # this worker's two scratch renders
        atexit.register(shutil.rmtree, self.tmp, ignore_errors=True)
        settings["blender_version"] = bpy.app.version_string
        if settings["device"] != "CPU":
            self._enable_gpu(settings["device"])
        self._oiio = None

    def _enable_gpu(self, device: str) -> None:
        preferences = self.bpy.context.preferences.addons["cycles"].preferences
        try:
            preferences.compute_device_type = device
        except TypeError as error:
            raise RuntimeError(f"`--device {device}` is not available in this Blender build: {error}") from error
        preferences.get_devices()
        found = [d for d in preferences.devices if d.type == device]
        if not found:
            seen = sorted({d.type for d in preferences.devices})
            raise RuntimeError(
                f"`--device {device}`: Cycles found no {device} device (found: {', '.join(seen) or 'none'})."
            )
        for d in preferences.devices:
            d.use = d.type == device

    def oiio(self):
        """Blender's own OpenImageIO (reads the multi-part EXR that holds the shadow-catcher pass)."""
        if self._oiio is None:
            version = f"python{sys.version_info.major}.{sys.version_info.minor}"
            site = Path(self.bpy.utils.resource_path("LOCAL")) / "python" / "lib" / version / "site-packages"
            if str(site) not in sys.path:
                sys.path.append(str(site))
            import OpenImageIO

            self._oiio = OpenImageIO
        return self._oiio

    # ---- scene -------------------------------------------------------------------------------------------------

    def _reset(self, spec: SampleSpec):
        bpy = self.bpy
        bpy.ops.wm.read_homefile(use_empty=True, use_factory_startup=True)
        scene = bpy.context.scene
        s = self.settings
        scene.render.engine = "CYCLES"
        scene.cycles.device = "GPU" if s["device"] != "CPU" else "CPU"
        scene.cycles.samples = s["spp"]
        scene.cycles.use_adaptive_sampling = False
        scene.cycles.seed = spec.render_seed
        scene.cycles.use_denoising = s["denoise"]
        if s["denoise"]:
            scene.cycles.denoiser = "OPENIMAGEDENOISE"
        scene.cycles.caustics_reflective = scene.cycles.caustics_refractive = False
        scene.cycles.sample_clamp_indirect = 10.0
        scene.cycles.use_light_tree = False  # one light
        scene.render.threads_mode = "FIXED"
        scene.render.threads = s["threads"]
        scene.render.resolution_x = scene.render.resolution_y = s["resolution"]
        scene.render.resolution_percentage = 100
        scene.view_settings.view_transform = "Standard"  # albedo-faithful, no filmic curve
        scene.view_settings.look = "None"
        return scene

    def _material(self, name: str, spec: dict):
        bpy = self.bpy
        material = bpy.data.materials.new(name)
        nodes, links = material.node_tree.nodes, material.node_tree.links
        bsdf = next(node for node in nodes if node.type == "BSDF_PRINCIPLED")
        bsdf.inputs["Base Color"].default_value = (*spec["base_color"], 1.0)
        bsdf.inputs["Roughness"].default_value = spec["roughness"]
        bsdf.inputs["Metallic"].default_value = spec["metallic"]
        if spec.get("pattern") in ("checker", "noise"):
            if spec["pattern"] == "checker":
                texture = nodes.new("ShaderNodeTexChecker")
                texture.inputs["Color1"].default_value = (*spec["base_color"], 1.0)
                texture.inputs["Color2"].default_value = (*spec["color2"], 1.0)
                texture.inputs["Scale"].default_value = spec["pattern_scale"]
                links.new(texture.outputs["Color"], bsdf.inputs["Base Color"])
            else:
                texture = nodes.new("ShaderNodeTexNoise")
                texture.inputs["Scale"].default_value = spec["pattern_scale"]
                ramp = nodes.new("ShaderNodeValToRGB")
                ramp.color_ramp.elements[0].color = (*spec["base_color"], 1.0)
                ramp.color_ramp.elements[1].color = (*spec["color2"], 1.0)
                links.new(texture.outputs["Fac"], ramp.inputs["Fac"])
                links.new(ramp.outputs["Color"], bsdf.inputs["Base Color"])
        return material

    def _build_procedural(self, recipe: dict):
        bpy = self.bpy
        vertices, faces, material_indices, smooth = recipe_mesh(recipe)
        mesh = bpy.data.meshes.new("procedural")
        mesh.from_pydata(vertices.tolist(), [], faces)
        mesh.polygons.foreach_set("material_index", material_indices)
        mesh.polygons.foreach_set("use_smooth", smooth)
        for i, material in enumerate(recipe["materials"]):
            mesh.materials.append(self._material(f"material_{i}", material))
        mesh.validate()
        mesh.update()
        obj = bpy.data.objects.new("object", mesh)
        bpy.context.scene.collection.objects.link(obj)
        return obj

    def _import_mesh(self, path: str):
        """Imports any supported file and merges its geometry (modifiers and poses applied) into one mesh object."""
        bpy = self.bpy
        suffix = Path(path).suffix.lower()
        before = set(bpy.data.objects)
        try:
            with _quiet_stdout():
                if suffix == ".blend":
                    with bpy.data.libraries.load(path, link=False) as (source, target):
                        target.objects = list(source.objects)
                    for obj in target.objects:
                        if obj is not None:
                            bpy.context.scene.collection.objects.link(obj)
                else:
                    module, name = MESH_IMPORTERS[suffix].split(".")
                    result = getattr(getattr(bpy.ops, module), name)(filepath=path)
                    if "FINISHED" not in result:
                        raise MeshImportError(f"the importer returned {sorted(result)}")
        except MeshImportError:
            raise
        except Exception as error:  # importers raise RuntimeError, ValueError, KeyError, ... on bad files
            raise MeshImportError(
                f"{type(error).__name__}: {str(error).strip().splitlines()[-1] if str(error).strip() else ''}"
            ) from error
        imported = [obj for obj in bpy.data.objects if obj not in before]
        depsgraph = bpy.context.evaluated_depsgraph_get()
        meshes, faceless = [], 0
        for obj in imported:
            if obj.type not in ("MESH", "CURVE", "SURFACE", "META", "FONT"):
                continue
            mesh = bpy.data.meshes.new_from_object(
                obj.evaluated_get(depsgraph), preserve_all_data_layers=True, depsgraph=depsgraph
            )
            if len(mesh.polygons) == 0:  # loose vertices or edges only (a point cloud, a wire): nothing to render
                faceless += len(mesh.vertices) > 0
                continue
            mesh.transform(obj.matrix_world)
            if len(mesh.materials) == 0 and len(mesh.color_attributes) > 0:
                mesh.materials.append(self._vertex_color_material(mesh.color_attributes[0].name))
            merged = bpy.data.objects.new(f"part_{len(meshes)}", mesh)
            bpy.context.scene.collection.objects.link(merged)
            meshes.append(merged)
        for obj in imported:
            bpy.data.objects.remove(obj, do_unlink=True)
        if not meshes:
            if faceless:
                raise MeshImportError(
                    "the file holds vertices or edges but no faces (a point cloud or a wire frame): no surface to "
                    "render or to cast a shadow"
                )
            raise MeshImportError("the file holds no mesh geometry")
        if len(meshes) > 1:
            with bpy.context.temp_override(
                active_object=meshes[0], selected_editable_objects=meshes, selected_objects=meshes
            ):
                bpy.ops.object.join()
        return meshes[0]

    def _vertex_color_material(self, attribute: str):
        material = self.bpy.data.materials.new("vertex_colors")
        nodes = material.node_tree.nodes
        bsdf = next(node for node in nodes if node.type == "BSDF_PRINCIPLED")
        color = nodes.new("ShaderNodeVertexColor")
        color.layer_name = attribute
        material.node_tree.links.new(color.outputs["Color"], bsdf.inputs["Base Color"])
        return material

    def _world_vertices(self, obj) -> np.ndarray:
        mesh = obj.data
        local = np.empty(len(mesh.vertices) * 3, dtype=np.float64)
        mesh.vertices.foreach_get("co", local)
        local = local.reshape(-1, 3)
        matrix = np.array(obj.matrix_world)
        return local @ matrix[:3, :3].T + matrix[:3, 3]

    def _drop(self, obj, tilt_deg) -> None:
        """Rigid-body drop onto a temporary ground, from a slight random tilt, so the object settles in a stable pose."""
        bpy = self.bpy
        obj.matrix_world = _matrix(self.mathutils, placement_matrix(self._world_vertices(obj), 0.0))
        tilt = np.eye(4)
        tilt[:3, :3] = euler_matrix([tilt_deg[0], tilt_deg[1], 0.0])
        tilt[2, 3] = 0.3 + OBJECT_LARGEST_SIDE
        obj.matrix_world = _matrix(self.mathutils, tilt @ np.array(obj.matrix_world))
        bpy.ops.mesh.primitive_plane_add(size=50.0)
        ground = bpy.context.active_object
        scene = bpy.context.scene
        for target, kind in ((obj, "ACTIVE"), (ground, "PASSIVE")):
            with bpy.context.temp_override(object=target, active_object=target, selected_objects=[target]):
                bpy.ops.rigidbody.object_add(type=kind)
        obj.rigid_body.collision_shape = "CONVEX_HULL"
        obj.rigid_body.friction = ground.rigid_body.friction = 0.9
        frames = 180
        scene.frame_start, scene.frame_end = 1, frames
        scene.rigidbody_world.point_cache.frame_end = frames
        for frame in range(1, frames + 1):
            scene.frame_set(frame)
        settled = np.array(obj.matrix_world)
        bpy.ops.rigidbody.world_remove()
        bpy.data.objects.remove(ground, do_unlink=True)
        scene.frame_set(1)
        obj.matrix_world = _matrix(self.mathutils, settled)

    def _render(self, scene, path: Path, exr: bool, region=None) -> None:
        """Renders to `path`; only the pixels of `region` (col0, row0, col1, row1; None = all) are traced."""
        resolution = self.settings["resolution"]
        scene.render.use_border = region is not None
        scene.render.use_crop_to_border = False
        if region is not None:
            col0, row0, col1, row1 = region
            scene.render.border_min_x, scene.render.border_max_x = col0 / resolution, col1 / resolution
            scene.render.border_min_y, scene.render.border_max_y = 1.0 - row1 / resolution, 1.0 - row0 / resolution
        settings = scene.render.image_settings
        if exr:
            settings.media_type = "MULTI_LAYER_IMAGE"  # Blender 5.0: before file_format
            settings.file_format = "OPEN_EXR_MULTILAYER"
            settings.color_depth = "32"
        else:
            settings.media_type = "IMAGE"
            settings.file_format = "PNG"
            settings.color_mode = "RGBA"
            settings.color_depth = "8"
        scene.render.filepath = str(path)
        with _quiet_stdout():
            self.bpy.ops.render.render(write_still=True)

    def _read_pass(self, path: Path, pass_name: str) -> np.ndarray:
        """One pass of a (multi-part) multilayer EXR as float32 HxWxC, row 0 at the top."""
        oiio = self.oiio()
        image = oiio.ImageInput.open(str(path))
        if image is None:
            raise RuntimeError(f"Could not read {path}: {oiio.geterror()}")
        try:
            subimage = 0
            while image.seek_subimage(subimage, 0):
                names = list(image.spec().channelnames)
                wanted = [i for i, name in enumerate(names) if name.split(".")[-2:-1] == [pass_name]]
                if wanted:
                    pixels = image.read_image(format="float")
                    return np.asarray(pixels, dtype=np.float32)[..., wanted]
                subimage += 1
        finally:
            image.close()
        raise RuntimeError(f"{path} has no `{pass_name}` pass.")

    def render(self, spec: SampleSpec):
        """-> (object RGB uint8, mask bool, shadow float32, camera metadata, placement metadata)."""
        bpy, mathutils, s = self.bpy, self.mathutils, self.settings
        scene = self._reset(spec)
        recipe = None
        if spec.mesh_path is None:
            recipe = object_recipe(s["seed"], spec.object_index, s.get("families") or DEFAULT_FAMILIES)
            if recipe["family"] != spec.family:  # the plan and the worker must draw the same object
                raise RuntimeError(f"object {spec.object_index}: planned family {spec.family}, drew {recipe['family']}")
        obj = self._build_procedural(recipe) if recipe is not None else self._import_mesh(spec.mesh_path)
        if s["drop"]:
            self._drop(obj, spec.drop_tilt_deg)
        placement = placement_matrix(self._world_vertices(obj), spec.rotation_z_deg)
        obj.matrix_world = _matrix(mathutils, placement @ np.array(obj.matrix_world))
        vertices = self._world_vertices(obj)
        low, high = vertices.min(axis=0), vertices.max(axis=0)
        height = float(high[2] - low[2])
        placement_info = {
            "largest_side": OBJECT_LARGEST_SIDE,
            "rotation_z_deg": spec.rotation_z_deg,
            "scale": float(np.linalg.norm(placement[:3, 0])),
            "dropped": bool(s["drop"]),
            "height": height,
            "bbox_min": low.tolist(),
            "bbox_max": high.tolist(),
            "kind": recipe["kind"] if recipe is not None else None,  # the variant within the family
        }

        target = (0.0, 0.0, height / 2.0)
        camera_info = camera_metadata(
            spec.camera_distance, spec.camera_elevation_deg, spec.camera_azimuth_deg, target, s["resolution"]
        )
        camera_data = bpy.data.cameras.new("camera")
        camera_data.lens, camera_data.sensor_width = FOCAL_LENGTH_MM, SENSOR_WIDTH_MM
        camera_data.sensor_fit = "HORIZONTAL"  # the sensor width spans the image width, as camera_intrinsics assumes
        camera_data.clip_start, camera_data.clip_end = 0.05, 1000.0
        camera = bpy.data.objects.new("camera", camera_data)
        scene.collection.objects.link(camera)
        camera.matrix_world = _matrix(mathutils, blender_camera_matrix_world(camera_info["location"], target))
        scene.camera = camera

        lights = []
        for i, (theta, phi, size, power) in enumerate(spec.light_list()):
            light_data = bpy.data.lights.new(f"area_light_{i}", "AREA")
            light_data.shape, light_data.size, light_data.energy = "SQUARE", size, power * s["light_power"]
            light = bpy.data.objects.new(f"area_light_{i}", light_data)
            scene.collection.objects.link(light)
            light.matrix_world = _matrix(mathutils, light_matrix_world(theta, phi))
            lights.append(light)

        world = bpy.data.worlds.new("ambient")
        scene.world = world
        background = next(node for node in world.node_tree.nodes if node.type == "BACKGROUND")
        background.inputs["Color"].default_value = (1.0, 1.0, 1.0, 1.0)

        ground_mesh = bpy.data.meshes.new("ground")
        half = 100.0
        ground_mesh.from_pydata(
            [(-half, -half, 0), (half, -half, 0), (half, half, 0), (-half, half, 0)], [], [(0, 1, 2, 3)]
        )
        ground = bpy.data.objects.new("ground", ground_mesh)
        scene.collection.objects.link(ground)
        ground.is_shadow_catcher = True

        # Render 1: the object alone (no ground), area light + ambient, transparent film -> object image and mask.
        scene.render.film_transparent = True
        ground.hide_render = True
        background.inputs["Strength"].default_value = s["ambient"]
        scene.cycles.max_bounces, scene.cycles.diffuse_bounces, scene.cycles.glossy_bounces = 4, 2, 2
        scene.cycles.transmission_bounces, scene.cycles.transparent_max_bounces = 4, 8
        object_path = self.tmp / "object.png"
        projection = np.asarray(camera_info["projection_matrix"])
        # Only the pixels the object (render 1) or its shadow (render 2) can reach are traced; with denoising a band
        # around them too, so that the denoiser's view of the unrendered border never reaches the kept pixels.
        pad = DENOISE_BORDER_PX if s["denoise"] else 0
        object_region = pixel_rect(projection, _box_corners(low, high), s["resolution"])
        self._render(scene, object_path, exr=False, region=grow_rect(object_region, pad, s["resolution"]))
        with Image.open(object_path) as image:
            rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0  # straight alpha
        mask = mask_from_alpha(rgba[..., 3])
        if not mask.any():  # never written: a sample with no object would teach the model nothing but noise
            raise RuntimeError(
                "the object covers no pixel of the render (empty mask): degenerate geometry or fully transparent "
                "materials?"
            )
        object_rgb = object_image_on_white(rgba, mask)

        # Render 2: the ground as a shadow catcher, the object invisible to the camera but casting shadows, no ambient.
        ground.hide_render = False
        obj.visible_camera = False
        background.inputs["Strength"].default_value = 0.0
        scene.cycles.max_bounces = scene.cycles.diffuse_bounces = scene.cycles.glossy_bounces = 0
        scene.view_layers[0].cycles.use_pass_shadow_catcher = True
        light_list = spec.light_list()
        regions = [shadow_region(low, high, t, p, z, projection, s["resolution"]) for t, p, z, _ in light_list]
        shadow = self._render_shadow(scene, mask, union_rect(regions), pad)  # all lights on: the combined map
        light_shadows = None
        if spec.lights is not None and s.get("single_light_maps"):
            light_shadows = []
            for i, region in enumerate(regions):  # each light alone: the true single-light maps it is composed of
                for j, light in enumerate(lights):
                    light.hide_render = j != i
                light_shadows.append(self._render_shadow(scene, mask, region, pad))
            for light in lights:
                light.hide_render = False
        return object_rgb, mask, shadow, camera_info, placement_info, light_shadows

    def _render_shadow(self, scene, mask: np.ndarray, region, pad: int) -> np.ndarray:
        """The shadow map of the lights now on (render 2), traced only inside `region` (None = the whole frame)."""
        if region is not None and (region[2] <= region[0] or region[3] <= region[1]):
            return np.zeros(mask.shape, dtype=np.float32)  # the shadow falls outside the picture
        shadow_path = self.tmp / "shadow.exr"
        self._render(scene, shadow_path, exr=True, region=grow_rect(region, pad, self.settings["resolution"]))
        return shadow_map_from_catcher(self._read_pass(shadow_path, "Shadow Catcher"), mask, region)


# --------------------------------------------------------------------------------------------------------------------
# 8. Worker processes.
# --------------------------------------------------------------------------------------------------------------------

_WORKER: dict = {}


def _init_worker(settings: dict) -> None:
    logging.basicConfig(level=settings.get("log_level", "WARNING"), format="%(levelname)s %(name)s: %(message)s")
    try:
        _WORKER["renderer"] = BlenderRenderer(dict(settings))
    except Exception as error:  # reported by the first task, so the parent can stop with a clear message
        _WORKER["fatal"] = f"{type(error).__name__}: {error}"
    _WORKER["failed_meshes"] = {}


def _render_task(spec: SampleSpec, root: str, fmt: str) -> dict:
    """Renders and writes one sample; never raises (the parent counts what went wrong)."""
    result = {"index": spec.index, "key": spec.key, "mesh_source": spec.mesh_source}
    if "fatal" in _WORKER:
        return {**result, "status": "fatal", "reason": _WORKER["fatal"]}
    failed_meshes = _WORKER["failed_meshes"]
    if spec.mesh_path in failed_meshes:
        return {**result, "status": "mesh_failed", "reason": failed_meshes[spec.mesh_path]}
    renderer = _WORKER["renderer"]
    start, cpu_start = time.perf_counter(), time.process_time()  # CPU time: all of this process's render threads
    try:
        object_rgb, mask, shadow, camera, placement, light_shadows = renderer.render(spec)
        metadata = sample_metadata(spec, camera, placement, renderer.settings)
        OutputLayout(Path(root), fmt).write(
            spec.key, object_rgb, mask, shadow, metadata, renderer.settings["shadow_bits"], light_shadows
        )
    except MeshImportError as error:
        failed_meshes[spec.mesh_path] = str(error)
        return {**result, "status": "mesh_failed", "reason": str(error)}
    except Exception as error:
        return {
            **result,
            "status": "failed",
            "reason": f"{type(error).__name__}: {error}",
            "traceback": traceback.format_exc(),
        }
    return {
        **result,
        "status": "ok",
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu_start,
    }


class _Progress:
    """tqdm when installed (samples/s in its rate), else a log line every few seconds."""

    def __init__(self, total: int, desc: str):
        self.total, self.done, self.start, self.last = total, 0, time.perf_counter(), 0.0
        try:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="sample", dynamic_ncols=True, file=sys.stderr)
        except ImportError:
            self.bar = None

    def update(self, **postfix) -> None:
        self.done += 1
        postfix["samples/s"] = f"{self.done / max(time.perf_counter() - self.start, 1e-9):.2f}"
        if self.bar is not None:
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(1)
        elif time.perf_counter() - self.last > 5 or self.done == self.total:
            self.last = time.perf_counter()
            logger.info("%d/%d samples %s", self.done, self.total, postfix)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def render_samples(specs: list[SampleSpec], roots: dict, settings: dict, workers: int) -> list[dict]:
    """Renders `specs` in `workers` spawned processes (each owns one Blender), a few samples in flight per worker;
    results in completion order. A dead worker (a crash inside Blender, out of memory) stops the run: every finished
    sample is already on disk and the same command resumes."""
    import multiprocessing

    results, progress, counts, warned_meshes = [], _Progress(len(specs), "render"), {"ok": 0, "failed": 0}, set()
    queue, in_flight = iter(specs), {}
    executor = ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker, initargs=(settings,)
    )

    def submit_next() -> None:
        spec = next(queue, None)
        if spec is not None:
            in_flight[executor.submit(_render_task, spec, str(roots[spec.split]), settings["format"])] = spec

    try:
        for _ in range(4 * workers):
            submit_next()
        while in_flight:
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                spec = in_flight.pop(future)
                try:
                    result = future.result()
                except BrokenProcessPool as error:
                    raise RuntimeError(
                        f"a worker process died while rendering (sample {spec.key}, mesh {spec.mesh_source}): {error}. "
                        "Finished samples are kept; run the same command again to resume."
                    ) from error
                if result["status"] == "fatal":
                    raise RuntimeError(result["reason"])
                if result["status"] == "mesh_failed" and spec.mesh_source not in warned_meshes:
                    warned_meshes.add(spec.mesh_source)
                    logger.warning("Skipping mesh %s: %s", spec.mesh_source, result["reason"])
                elif result["status"] == "failed":
                    logger.error("Sample %s failed: %s", spec.key, result.get("traceback") or result["reason"])
                counts["ok" if result["status"] == "ok" else "failed"] += 1
                results.append(result)
                progress.update(**counts)
                submit_next()
    finally:
        progress.close()
        executor.shutdown(wait=True, cancel_futures=True)
    return results


# --------------------------------------------------------------------------------------------------------------------
# 9. Contact sheet.
# --------------------------------------------------------------------------------------------------------------------

CONTACT_SHEET_BACKGROUND = (0.80, 0.76, 0.70)  # a warm light gray "floor" for the composites


def make_contact_sheet(
    roots, fmt: str, path, max_columns: int = 12, max_objects: int = 4, cell: int | None = None
) -> Path:
    """One block per object (up to `max_objects`): a column per sample (up to `max_columns`, in key order), rows =
    object image, mask, shadow map, composite on a plain floor; each column labelled with its light."""
    by_object: dict[str, list] = {}
    for root in roots:
        layout = OutputLayout(Path(root), fmt)
        for key, metadata in layout.records().items():
            by_object.setdefault(metadata.get("object_id", key), []).append((key, metadata, layout))
    if not by_object:
        raise ValueError(f"No complete samples to show under {', '.join(map(str, roots))}.")
    blocks = [
        sorted(samples, key=lambda s: s[0])[:max_columns] for _, samples in sorted(by_object.items())[:max_objects]
    ]
    first = blocks[0][0]
    with Image.open(first[2].files(first[0])["object"]) as image:
        size = cell or image.width
    label_height, margin, row_names = 14, 72, ("object", "mask", "shadow", "composite")
    columns = max(len(block) for block in blocks)
    sheet = Image.new("RGB", (margin + columns * size, len(blocks) * (label_height + 4 * size)), "white")
    draw = ImageDraw.Draw(sheet)
    for b, block in enumerate(blocks):
        top = b * (label_height + 4 * size)
        for r, name in enumerate(row_names):
            draw.text((4, top + label_height + r * size + size // 2 - 5), name, fill=(0, 0, 0))
        for c, (key, metadata, layout) in enumerate(block):
            files = layout.files(key)
            with Image.open(files["object"]) as image:
                object_rgb = np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR))
            mask = load_gray(files["mask"])
            shadow = load_gray(files["shadow"])
            if mask.shape[0] != size:
                mask = np.asarray(Image.fromarray(mask).resize((size, size), Image.BILINEAR))
                shadow = np.asarray(Image.fromarray(shadow).resize((size, size), Image.BILINEAR))
            tiles = [
                object_rgb,
                np.repeat((mask[..., None] * 255).round().astype(np.uint8), 3, axis=2),
                np.repeat((shadow[..., None] * 255).round().astype(np.uint8), 3, axis=2),
                composite(object_rgb, mask, shadow, CONTACT_SHEET_BACKGROUND),
            ]
            left = margin + c * size
            label = (
                f"{len(metadata['lights'])} lights"
                if "lights" in metadata
                else f"t{metadata['theta']:g} p{metadata['phi']:g} s{metadata['size']:g}"
            )
            draw.text((left + 3, top + 1), label, fill=(0, 0, 0))
            for r, tile in enumerate(tiles):
                sheet.paste(Image.fromarray(tile), (left, top + label_height + r * size))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, optimize=True)
    return path


# --------------------------------------------------------------------------------------------------------------------
# 10. Command line.
# --------------------------------------------------------------------------------------------------------------------


def _light_triple(text: str) -> tuple[float, float, float]:
    try:
        theta, phi, size = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected THETA,PHI,SIZE (e.g. 30,0,2), got {text!r}") from None
    return theta, phi, size


def _light_set(text: str) -> list[tuple[float, float, float, float]]:
    lights = []
    for part in text.split(";"):
        try:
            values = [float(v) for v in part.split(",")]
        except ValueError:
            values = []
        if len(values) not in (3, 4):
            raise argparse.ArgumentTypeError(
                f"expected THETA,PHI,SIZE[,POWER] lights separated by ';' (e.g. '30,0,2;20,120,6,0.5'), got {text!r}"
            )
        lights.append((*values, 1.0) if len(values) == 3 else tuple(values))
    return lights


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--output_dir", required=True, help="dataset folder (created; resumed when it exists)")
    parser.add_argument("--num_samples", type=int, default=None, help="random lights: this many samples (index 0..N-1)")
    parser.add_argument(
        "--meshes",
        default=None,
        help=f"a folder of meshes ({', '.join(MESH_IMPORTERS)}), searched recursively, or one mesh file; default: "
        "procedural objects",
    )
    parser.add_argument(
        "--num_objects",
        type=int,
        default=None,
        help="objects to use (first N meshes, or N procedural ones; default: all meshes, "
        "--num_samples procedural objects with random lights, 1 with --lights/--tracks)",
    )
    parser.add_argument(
        "--families",
        nargs="+",
        default=None,
        choices=FAMILIES,
        metavar="FAMILY",
        help=f"procedural objects: draw only these families ({', '.join(FAMILIES)}); "
        f"default: {' '.join(DEFAULT_FAMILIES)} (the classic generator, seed for seed)",
    )
    parser.add_argument(
        "--exclude_families",
        nargs="+",
        default=None,
        choices=FAMILIES,
        metavar="FAMILY",
        help="procedural objects: leave these families out; alone, every family but these (e.g. a training set for a "
        "family-held-out test)",
    )
    parser.add_argument("--resolution", type=int, default=256, help="square image side in pixels (a multiple of 8)")
    parser.add_argument("--spp", type=int, default=32, help="Cycles samples per pixel")
    parser.add_argument(
        "--denoise", action="store_true", help="OpenImageDenoise on both renders (cleans the shadow pass)"
    )
    parser.add_argument("--workers", type=int, default=1, help="parallel Blender processes")
    parser.add_argument(
        "--threads", type=int, default=None, help="Cycles threads per worker (default: cores // workers)"
    )
    parser.add_argument("--device", default="CPU", choices=DEVICES, help="Cycles device")
    parser.add_argument("--seed", type=int, default=0, help="every sample is a function of (seed, index)")
    parser.add_argument(
        "--theta", type=float, default=None, help="fix theta (degrees from +z, in [0, 90)) instead of drawing 0..45"
    )
    parser.add_argument("--phi", type=float, default=None, help="fix phi (degrees from +x) instead of drawing 0..359")
    parser.add_argument("--size", type=float, default=None, help="fix the light's side (> 0) instead of drawing 2..8")
    parser.add_argument(
        "--lights",
        type=_light_triple,
        nargs="+",
        default=None,
        metavar="THETA,PHI,SIZE",
        help="render each object under each of these lights (one pose and camera per object)",
    )
    parser.add_argument(
        "--light_sets",
        type=_light_set,
        nargs="+",
        default=None,
        metavar="T,P,S[,W];T,P,S[,W]...",
        help="render each object under each set of lights AT ONCE (W: relative power, default 1); the shadow map is "
        "that of all the lights together",
    )
    parser.add_argument(
        "--single_light_maps",
        action="store_true",
        help="with --light_sets: also write each light's own shadow map to light_shadows/<key>_<i>.png",
    )
    parser.add_argument(
        "--tracks",
        nargs="*",
        default=None,
        choices=TRACK_NAMES,
        help="render the benchmark's track designs for every object (all three if none named)",
    )
    parser.add_argument(
        "--test_fraction",
        type=float,
        default=0.0,
        help="> 0: split BY OBJECT into output_dir/train and output_dir/test",
    )
    parser.add_argument(
        "--format",
        default="custom",
        choices=FORMATS,
        help="custom: objects/ masks/ shadows/ metadata.json; benchmark: <key>.*.png",
    )
    parser.add_argument(
        "--tar", action="store_true", help="benchmark format: also pack the samples into <folder>/<folder name>.tar"
    )
    parser.add_argument(
        "--shadow_bits", type=int, default=16, choices=SHADOW_BITS, help="bit depth of the shadow-map PNGs"
    )
    parser.add_argument(
        "--ambient", type=float, default=0.35, help="uniform ambient (world) strength in the object image only"
    )
    parser.add_argument(
        "--light_power", type=float, default=500.0, help="area light power in watts (object image exposure)"
    )
    parser.add_argument(
        "--drop", action="store_true", help="rigid-body drop onto the ground for a stable pose before the z rotation"
    )
    parser.add_argument(
        "--num_shards", type=int, default=1, help="split the samples over this many runs (machines, job array)"
    )
    parser.add_argument(
        "--shard_index", type=int, default=0, help="which shard this run renders: index %% num_shards == shard_index"
    )
    parser.add_argument(
        "--merge_only",
        action="store_true",
        help="render nothing; rebuild metadata.json (and the tar) from the samples on disk",
    )
    parser.add_argument(
        "--contact_sheet", default=None, metavar="PATH", help="afterwards, save a contact sheet of the samples to PATH"
    )
    parser.add_argument("--contact_sheet_columns", type=int, default=12, help="samples per object on the contact sheet")
    parser.add_argument("--log_level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    args = parser.parse_args(argv)
    _check_args(parser, args)
    return args


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Every mistake named by its argument, with what is allowed; fills args.mode."""
    designs = [name for name in ("tracks", "lights", "light_sets") if getattr(args, name)]
    designs += ["tracks"] if args.tracks == [] else []
    args.mode = designs[0] if designs else "random"
    if args.tracks == []:
        args.tracks = list(TRACK_NAMES)
    if len(set(designs)) > 1:
        parser.error(f"`--{designs[0]}` and `--{designs[1]}` are exclusive: pick one light design.")
    if args.single_light_maps and args.mode != "light_sets":
        parser.error(
            "`--single_light_maps` writes the maps of each light of a `--light_sets` sample; add `--light_sets`."
        )
    if args.mode == "light_sets" and args.format != "custom":
        parser.error("`--light_sets` writes the custom layout only; drop `--format benchmark`.")
    if args.mode == "random" and args.num_samples is None and not args.merge_only:
        parser.error(
            "`--num_samples` is required (or `--lights`/`--tracks`, which render every object under fixed lights)."
        )
    if args.mode != "random":
        fixed = [name for name in ("num_samples", "theta", "phi", "size") if getattr(args, name) is not None]
        if fixed:
            parser.error(
                f"`--{fixed[0]}` only applies to random lights; `--{args.mode}` sets the lights (and samples) itself."
            )
    for name, value in vars(args).items():  # NaN passes every `<` / `>` check below: refused once, for every flag
        if isinstance(value, float) and not math.isfinite(value):
            parser.error(f"`--{name}` must be a finite number, got {value}.")
    for name in ("lights", "light_sets"):
        for light in [v for item in getattr(args, name) or [] for v in (item if name == "light_sets" else [item])]:
            if not all(math.isfinite(v) for v in light):
                parser.error(f"`--{name}`: every THETA,PHI,SIZE[,POWER] must be a finite number, got {light}.")
    if args.num_samples is not None and args.num_samples < 1:
        # 0 would record a dataset of 0 objects in .render/config.json, which no later run could extend
        parser.error(f"`--num_samples` must be >= 1, got {args.num_samples}.")
    if args.num_objects is not None and args.num_objects < 1:
        parser.error(f"`--num_objects` must be >= 1, got {args.num_objects}.")
    try:
        check_render_resolution(args.resolution)
    except ValueError as error:
        parser.error(str(error))
    for name in ("spp", "workers", "num_shards", "contact_sheet_columns"):
        if getattr(args, name) < 1:
            parser.error(f"`--{name}` must be >= 1, got {getattr(args, name)}.")
    if args.threads is not None and args.threads < 1:
        parser.error(f"`--threads` must be >= 1, got {args.threads}.")
    if not 0 <= args.shard_index < args.num_shards:
        parser.error(
            f"`--shard_index` must be in [0, {args.num_shards}) for `--num_shards {args.num_shards}`, got {args.shard_index}."
        )
    lights = list(args.lights or []) + [
        (args.theta if args.theta is not None else 0.0, 0.0, args.size if args.size is not None else 1.0)
    ]
    for light_set in args.light_sets or []:
        lights += [light[:3] for light in light_set]
        if any(light[3] <= 0 for light in light_set):
            parser.error(
                f"each light's relative power must be > 0, got {[light[3] for light in light_set]} (`--light_sets`)."
            )
    for theta, _, size in lights:
        if not 0 <= theta < THETA_MAX_DEG:
            parser.error(f"theta must be in [0, {THETA_MAX_DEG:g}) degrees, got {theta:g} (`--theta`/`--lights`).")
        if size <= 0:
            parser.error(f"the light size must be > 0, got {size:g} (`--size`/`--lights`).")
    if not 0 <= args.test_fraction < 1:
        parser.error(f"`--test_fraction` must be in [0, 1), got {args.test_fraction}.")
    if args.tracks is not None and args.test_fraction > 0:
        parser.error("`--tracks` renders a test set; it does not combine with `--test_fraction`.")
    if args.format == "benchmark" and args.tracks is None:
        parser.error("`--format benchmark` needs `--tracks`: the benchmark's loader groups every sample by its track.")
    if args.tar and args.format != "benchmark":
        parser.error("`--tar` packs the benchmark format; add `--format benchmark`.")
    if args.ambient < 0 or args.light_power <= 0:
        parser.error("`--ambient` must be >= 0 and `--light_power` > 0.")
    if args.meshes is not None and (args.families or args.exclude_families):
        parser.error("`--families`/`--exclude_families` choose procedural objects; they do not apply to `--meshes`.")
    try:
        families = check_families(args.families, args.exclude_families or ())
    except ValueError as error:
        parser.error(f"`--families`/`--exclude_families`: {error}")
    args.families = None if families == DEFAULT_FAMILIES else list(families)  # None: the classic generator
    args.exclude_families = None
    if args.meshes is not None:
        meshes = Path(args.meshes)
        if not meshes.exists():
            parser.error(f"`--meshes {args.meshes}` does not exist (a folder of meshes, or one mesh file).")
        if not find_meshes(meshes):
            problem = "is not a mesh file" if meshes.is_file() else "holds no mesh file"
            where = "" if meshes.is_file() else " (searched recursively)"
            parser.error(f"`--meshes {args.meshes}` {problem}; supported: {', '.join(MESH_IMPORTERS)}{where}.")
    if args.contact_sheet is not None:
        _check_contact_sheet(parser, Path(args.contact_sheet))
    output_dir = Path(args.output_dir)
    try:
        (output_dir / STATE_DIR).mkdir(parents=True, exist_ok=True)
        probe = output_dir / STATE_DIR / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        parser.error(f"`--output_dir {args.output_dir}` is not writable: {error.strerror or error}.")
    if args.threads is None:
        args.threads = max(1, (os.cpu_count() or 1) // args.workers)


def _check_contact_sheet(parser: argparse.ArgumentParser, path: Path) -> None:
    """--contact_sheet is written after every render: a path it cannot be saved to is refused before the first."""
    if path.suffix.lower() not in Image.registered_extensions() or path.is_dir():
        parser.error(f"`--contact_sheet {path}` must name an image file to write (e.g. contact_sheet.png).")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir() or not os.access(parent, os.W_OK):
                parser.error(f"`--contact_sheet {path}` cannot be written: {parent} is not a writable folder.")
            break


def _config(args, objects: list[ObjectSource]) -> dict:
    """What fixes the content of every sample; a folder is only resumed or extended with the same."""
    mesh_list = hashlib.sha256("\n".join(o.mesh_source for o in objects).encode()).hexdigest()[:16]
    return {
        "format": args.format,
        "resolution": args.resolution,
        "spp": args.spp,
        "denoise": args.denoise,
        "seed": args.seed,
        "mode": args.mode,
        "theta": args.theta,
        "phi": args.phi,
        "size": args.size,
        "lights": [list(light) for light in args.lights] if args.lights else None,
        "light_sets": [[list(light) for light in light_set] for light_set in args.light_sets]
        if args.light_sets
        else None,
        "single_light_maps": args.single_light_maps or None,
        "tracks": args.tracks,
        "objects": len(objects),
        "meshes": str(Path(args.meshes).resolve()) if args.meshes else PROCEDURAL_SOURCE,
        "mesh_list": mesh_list,
        "families": args.families,  # null: DEFAULT_FAMILIES (older folders have no key, which reads the same)
        "test_fraction": args.test_fraction,
        "shadow_bits": args.shadow_bits,
        "ambient": args.ambient,
        "light_power": args.light_power,
        "drop": args.drop,
    }


def _check_config(output_dir: Path, config: dict) -> None:
    path = output_dir / STATE_DIR / "config.json"
    if path.is_file():
        try:
            previous = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            previous = error
        if not isinstance(previous, dict):
            raise SystemExit(
                f"error: `--output_dir {output_dir}`: {path} (the settings its samples were rendered with) is unreadable "
                f"({previous}). Restore it, or choose another --output_dir."
            )
        differing = [key for key in config if previous.get(key) != config.get(key)]
        changed = [f"{key}: {previous.get(key)!r} there, {config.get(key)!r} now" for key in differing]
        if changed:
            more = "more --num_samples is fine"
            if set(differing) <= {"objects", "mesh_list"} and config["mode"] == "random":
                if config["meshes"] == PROCEDURAL_SOURCE:  # the object count followed --num_samples
                    more = (
                        "without --num_objects each random sample draws its own procedural object, so to add samples "
                        f"here pass --num_objects {previous.get('objects')}"
                    )
            raise SystemExit(
                f"error: `--output_dir {output_dir}` was rendered with other settings ({'; '.join(changed)}). Resume with the "
                f"same settings ({more}), or choose another --output_dir."
            )
    else:
        _atomic_write(path, lambda handle: handle.write(json.dumps(config, indent=1).encode()))


def check_render_resolution(value: int, flag: str = "--resolution") -> None:
    """The renderer's size rule: a multiple of 8 (the VAE's factor) and >= 8. ValueError naming `flag`."""
    if value < 8 or value % 8:
        raise ValueError(f"`{flag}` must be a multiple of 8 (>= 8), got {value}.")


def _blender_available() -> bool:
    return importlib.util.find_spec("bpy") is not None


def render_dataset(args, layouts: dict, roots: dict) -> dict:
    """Plans the dataset, renders this shard's missing samples and returns the run's counts."""
    objects = object_sources(args)
    try:  # before config.json is written: a plan that cannot be made must not fix the folder's settings
        plan = plan_samples(args, objects)
    except ValueError as error:  # e.g. a --test_fraction that leaves no training object
        raise SystemExit(f"error: {error}") from None
    _check_config(Path(args.output_dir), _config(args, objects))
    mine = [spec for spec in plan if spec.index % args.num_shards == args.shard_index]
    pending = [spec for spec in mine if not layouts[spec.split].is_complete(spec.key)]
    summary = {"samples_planned": len(mine), "already_complete": len(mine) - len(pending), "rendered": 0, "failed": 0}
    summary["failed_meshes"], summary["failures"] = {}, []
    logger.info(
        "%d samples in this shard: %d already complete, %d to render with %d worker(s) x %d thread(s) on %s.",
        *(len(mine), len(mine) - len(pending), len(pending), args.workers, args.threads, args.device),
    )
    if not pending:
        return summary
    if not _blender_available():
        raise SystemExit(
            "error: Blender's Python module `bpy` is not installed in this Python. Install it in its own environment "
            "(bpy 5.0.1 needs Python 3.11 and numpy<2): `python3.11 -m venv .venv-render && .venv-render/bin/pip "
            "install -r requirements-render.txt`, then run `.venv-render/bin/python render_shadow_dataset.py ...`."
        )
    settings = {
        **{name: getattr(args, name) for name in ("resolution", "spp", "denoise", "device", "threads", "seed")},
        **{name: getattr(args, name) for name in ("ambient", "light_power", "shadow_bits", "drop", "format")},
        "single_light_maps": args.single_light_maps,
        "families": args.families,
        "log_level": "WARNING",
    }
    start = time.perf_counter()
    try:
        results = render_samples(pending, roots, settings, args.workers)
    except RuntimeError as error:
        raise SystemExit(f"error: {error}") from None
    elapsed = time.perf_counter() - start
    summary["rendered"] = sum(r["status"] == "ok" for r in results)
    summary["failed"] = sum(r["status"] == "failed" for r in results)
    for result in results:
        if result["status"] == "mesh_failed":
            entry = summary["failed_meshes"].setdefault(
                result["mesh_source"], {"reason": result["reason"], "samples": 0}
            )
            entry["samples"] += 1
        elif result["status"] == "failed":
            summary["failures"].append({k: result[k] for k in ("key", "mesh_source", "reason")})
    summary.update(seconds=round(elapsed, 3), workers=args.workers, threads_per_worker=args.threads)
    summary["samples_per_second"] = round(summary["rendered"] / elapsed, 4) if elapsed > 0 else None
    return summary


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    output_dir = Path(args.output_dir)
    roots = split_roots(output_dir, args.test_fraction)
    layouts = {split: OutputLayout(root, args.format) for split, root in roots.items()}

    summary = {"rendered": 0, "already_complete": 0, "failed": 0, "failed_meshes": {}}
    if not args.merge_only:
        summary = render_dataset(args, layouts, roots)
    summary["complete_samples"] = {split or "all": layout.finalize(args.tar) for split, layout in layouts.items()}
    if not args.merge_only:
        shard = f"-shard{args.shard_index}of{args.num_shards}" if args.num_shards > 1 else ""
        text = json.dumps(summary, indent=1)
        _atomic_write(output_dir / STATE_DIR / f"summary{shard}.json", lambda handle: handle.write(text.encode()))

    failed_meshes = summary["failed_meshes"]
    logger.info(
        "Done: %d rendered, %d already complete, %d failed, %d mesh(es) skipped (%d samples); complete now: %s.",
        *(summary["rendered"], summary["already_complete"], summary["failed"], len(failed_meshes)),
        *(sum(entry["samples"] for entry in failed_meshes.values()), summary["complete_samples"]),
    )
    for mesh, entry in sorted(failed_meshes.items()):
        logger.warning("  skipped mesh %s (%d samples): %s", mesh, entry["samples"], entry["reason"])
    if failed_meshes and not any(summary["complete_samples"].values()):
        logger.error(
            "No sample was rendered: every mesh under --meshes %s failed to import (see above). The dataset is empty.",
            args.meshes,
        )
        return 1
    if args.contact_sheet:
        try:
            path = make_contact_sheet(list(roots.values()), args.format, args.contact_sheet, args.contact_sheet_columns)
        except (OSError, ValueError) as error:  # no complete sample yet, or the disk refused: the samples are kept
            logger.error("No contact sheet written to %s: %s", args.contact_sheet, error)
            return 1
        logger.info("Contact sheet: %s", path)
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
