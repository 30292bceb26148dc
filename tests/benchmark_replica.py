# Copyright 2026 The controllable-shadow-generation authors. Licensed under the Apache License, Version 2.0.
"""A replica of the public benchmark tar as it may really come, generated at test time (issue #19).

Nobody here has seen the real tar's exact metadata. Public traces of it show track folders named `softness_control`,
`direction_control_horz` and `direction_control_vert`, and per-sample metadata that carries more than the light. The
replica differs from what our own renderer writes in each of those ways:

- folder-style keys: `softness_control/obj_003_size4`, `direction_control_horz/obj_003_phi120`, ...;
- extra metadata keys the loader does not use: `r`, `light_location`, `light_energy`, `samples`;
- other track spellings in the `track` field: `softness_control`, `Soft`, `direction_control_horz`, `HORIZONTAL`,
  `direction_control_vert`, `vert`, or no `track` at all (the key names it);
- 1024 x 1024 PNGs (RGBA object image, gray mask, shadow map stored as RGB with three equal channels);
- optionally: other light-key spellings (`polar`, `azimuth`, `light_size`), no track names anywhere (keys like
  `renders/obj_003_size4`: only the light design tells the track), or inverted shadow maps (0 = full shadow).

    from benchmark_replica import make_benchmark_replica
    tar = make_benchmark_replica(tmp_path / "replica.tar")   # 3 objects x 2 lights x 3 tracks = 18 samples, 1024^2
"""

from __future__ import annotations

import io
import json
import math

import numpy as np
import PIL.Image
from data_factory import synthetic_sample, write_tar

TRACK_FOLDERS = {
    "softness": "softness_control",
    "horizontal": "direction_control_horz",
    "vertical": "direction_control_vert",
}
# The `track` value of object 1, 2, 3 (None: no `track` key, the folder names the track).
TRACK_SPELLINGS = {
    "softness": ("softness_control", "Soft", None),
    "horizontal": ("direction_control_horz", "HORIZONTAL", None),
    "vertical": ("direction_control_vert", "vert", None),
}
# A few lights per track, following the paper's designs (docs/design.md §4): (theta, phi, size), and the key suffix.
REPLICA_LIGHTS = {
    "softness": [((30, 0, size), f"size{size}") for size in (2, 8)],
    "horizontal": [((35, phi, 2), f"phi{phi}") for phi in (60, 240)],
    "vertical": [((theta, 0, 2), f"theta{theta}") for theta in (15, 45)],
}
LIGHT_DISTANCE = 8.0
UNTRACKED_KEY = "renders/extra_007"  # with track_names=False: a lone sample whose track nothing can tell


def _png(image: PIL.Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # fast: the test builds it every session
    return buffer.getvalue()


def _light_location(theta: float, phi: float) -> list[float]:
    theta, phi = math.radians(theta), math.radians(phi)
    return [LIGHT_DISTANCE * math.sin(theta) * math.cos(phi), LIGHT_DISTANCE * math.sin(theta) * math.sin(phi),
            LIGHT_DISTANCE * math.cos(theta)]  # fmt: skip


def _sample_at(size: int, theta: float, phi: float, light_size: float, seed: int):
    """data_factory's synthetic sample drawn at (at most) 256 px and enlarged to `size`: the replica's PNGs are
    1024^2 as the benchmark's are, at a fraction of the cost of drawing them there (mask and object stay hard-edged)."""
    drawn = min(size, 256)
    object_image, mask, shadow = synthetic_sample(theta, phi, light_size, image_size=drawn, seed=seed)
    if drawn == size:
        return object_image, mask, shadow
    enlarge = {"resample": PIL.Image.NEAREST}
    return (object_image.resize((size, size), **enlarge), mask.resize((size, size), **enlarge),
            shadow.resize((size, size), PIL.Image.BILINEAR))  # fmt: skip


def replica_samples(num_objects: int = 3, track_names: bool = True) -> list[tuple[str, str, tuple, str | None]]:
    """(key, true track, (theta, phi, size), `track` value or None) of every sample, in key order of objects."""
    samples = []
    for track, lights in REPLICA_LIGHTS.items():
        for number in range(1, num_objects + 1):
            for light, suffix in lights:
                folder = TRACK_FOLDERS[track] if track_names else "renders"
                spelling = TRACK_SPELLINGS[track][(number - 1) % 3] if track_names else None
                samples.append((f"{folder}/obj_{number:03d}_{suffix}", track, light, spelling))
    return samples


def replica_files(
    num_objects: int = 3,
    size: int = 1024,
    *,
    track_names: bool = True,
    light_keys: tuple[str, str, str] = ("theta", "phi", "size"),
    inverted: bool = False,
) -> dict[str, bytes]:
    """{member name: bytes} of the replica (see the module docstring)."""
    files = {}
    entries = replica_samples(num_objects, track_names)
    if not track_names:
        entries.append((UNTRACKED_KEY, None, (20, 40, 3), None))
    for index, (key, _, (theta, phi, light_size), spelling) in enumerate(entries):
        object_image, mask, shadow = _sample_at(size, theta, phi, light_size, seed=index % 3)
        rgba = PIL.Image.fromarray(np.asarray(object_image) * (np.asarray(mask)[..., None] > 0)).convert("RGBA")
        rgba.putalpha(mask)  # a cut-out on transparent black, as renders with a transparent film are saved
        shadow_values = np.asarray(shadow)
        if inverted:
            shadow_values = 255 - shadow_values
        metadata = dict(zip(light_keys, (theta, phi, light_size)))
        if spelling is not None:
            metadata["track"] = spelling
        metadata.update(r=LIGHT_DISTANCE, light_location=_light_location(theta, phi), light_energy=1000.0, samples=512)
        files[f"{key}.image.png"] = _png(rgba)
        files[f"{key}.mask.png"] = _png(mask)
        files[f"{key}.shadow.png"] = _png(PIL.Image.fromarray(shadow_values).convert("RGB"))
        files[f"{key}.metadata.json"] = json.dumps(metadata).encode()
    return files


def make_benchmark_replica(path, num_objects: int = 3, size: int = 1024, **options):
    """Writes the replica as one webdataset tar (members grouped by sample, as webdataset writes them)."""
    return write_tar(path, replica_files(num_objects, size, **options))
