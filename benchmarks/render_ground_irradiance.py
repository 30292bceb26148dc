# Copyright 2026 The controllable-shadow-generation authors. Licensed under the Apache License, Version 2.0.
"""Renders the renderer's own unoccluded irradiance E_without on the ground, one light at a time, to check the
composition weights of several lights against Blender rather than against our formula (README "Several lights").

A white Lambertian ground (albedo 1, so its radiance is E / pi), no object, direct light only, the renderer's light
placement (`light_matrix_world`) and a camera of the renderer's range. Writes, per light, `<name>.npz` with the
rendered radiance [H,W], each pixel's ground point [H,W,3] and the light. Needs `bpy` (the renderer's environment);
`benchmarks/bench_multi_light.py irradiance --data DIR` compares the maps with `area_light_irradiance`.

    .venv-render/bin/python benchmarks/render_ground_irradiance.py --output_dir /tmp/irradiance
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import render_shadow_dataset as rsd  # noqa: E402

LIGHTS = [(10.0, 0.0, 2.0), (30.0, 0.0, 2.0), (45.0, 0.0, 2.0), (30.0, 0.0, 8.0), (45.0, 120.0, 8.0)]


def render(output_dir: Path, resolution: int, spp: int, threads: int) -> None:
    renderer = rsd.BlenderRenderer({"device": "CPU"})  # its bpy and its OpenImageIO reader
    bpy, mathutils = renderer.bpy, renderer.mathutils
    camera_info = rsd.camera_metadata(9.0, 20.0, rsd.CAMERA_AZIMUTH_DEG, (0.0, 0.0, 0.5), resolution)
    points = rsd.pixel_ground_points(camera_info)
    output_dir.mkdir(parents=True, exist_ok=True)
    for theta, phi, size in LIGHTS:
        bpy.ops.wm.read_homefile(use_empty=True, use_factory_startup=True)
        scene = bpy.context.scene
        scene.render.engine = "CYCLES"
        scene.cycles.samples, scene.cycles.use_denoising, scene.cycles.use_adaptive_sampling = spp, False, False
        scene.cycles.max_bounces = 0  # direct light only: the ground's radiance is albedo x E / pi
        scene.render.threads_mode, scene.render.threads = "FIXED", threads
        scene.render.resolution_x = scene.render.resolution_y = resolution
        scene.render.resolution_percentage = 100
        scene.world = bpy.data.worlds.new("black")
        next(n for n in scene.world.node_tree.nodes if n.type == "BACKGROUND").inputs["Strength"].default_value = 0.0
        mesh = bpy.data.meshes.new("ground")
        mesh.from_pydata([(-100, -100, 0), (100, -100, 0), (100, 100, 0), (-100, 100, 0)], [], [(0, 1, 2, 3)])
        ground = bpy.data.objects.new("ground", mesh)
        scene.collection.objects.link(ground)
        material = bpy.data.materials.new("white")
        nodes = material.node_tree.nodes
        for node in list(nodes):
            if node.type != "OUTPUT_MATERIAL":
                nodes.remove(node)
        diffuse = nodes.new("ShaderNodeBsdfDiffuse")
        diffuse.inputs["Color"].default_value = (1.0, 1.0, 1.0, 1.0)
        material.node_tree.links.new(diffuse.outputs["BSDF"], nodes["Material Output"].inputs["Surface"])
        mesh.materials.append(material)
        light_data = bpy.data.lights.new("area_light", "AREA")
        light_data.shape, light_data.size, light_data.energy = "SQUARE", size, 500.0
        light = bpy.data.objects.new("area_light", light_data)
        scene.collection.objects.link(light)
        light.matrix_world = rsd._matrix(mathutils, rsd.light_matrix_world(theta, phi))
        camera_data = bpy.data.cameras.new("camera")
        camera_data.lens, camera_data.sensor_width, camera_data.sensor_fit = 50.0, 36.0, "HORIZONTAL"
        camera = bpy.data.objects.new("camera", camera_data)
        scene.collection.objects.link(camera)
        camera.matrix_world = rsd._matrix(
            mathutils, rsd.blender_camera_matrix_world(camera_info["location"], camera_info["look_at"])
        )
        scene.camera = camera
        settings = scene.render.image_settings
        settings.media_type = "MULTI_LAYER_IMAGE"
        settings.file_format, settings.color_depth = "OPEN_EXR_MULTILAYER", "32"
        exr = renderer.tmp / "ground.exr"
        scene.render.filepath = str(exr)
        with rsd._quiet_stdout():
            bpy.ops.render.render(write_still=True)
        radiance = renderer._read_pass(exr, "Combined")[..., :3].mean(axis=-1)
        name = f"t{theta:g}_p{phi:g}_s{size:g}"
        np.savez(output_dir / f"{name}.npz", radiance=radiance, points=points, light=np.array([theta, phi, size]))
        print(name, float(radiance.max()))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", type=Path, required=True)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--spp", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    render(args.output_dir, args.resolution, args.spp, args.threads)


if __name__ == "__main__":
    main()
