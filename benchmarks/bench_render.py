# Copyright 2026 The controllable-shadow-generation authors. Licensed under the Apache License, Version 2.0.
"""Samples/s (and per core) of the dataset renderer, render_shadow_dataset.py, per resolution, with the default settings
(32 spp, no denoising) and with OpenImageDenoise. Procedural objects with random lights, as a training set would be.

One Blender worker per core with one Cycles thread each (how the renderer scales on CPUs); each worker first renders one
untimed warm-up sample (Blender start-up, Cycles kernels), then the timed samples run. Reported both ways: wall-clock
samples/s (what you get, if nothing else runs on the machine) and the workers' CPU seconds per sample (a per-core cost
that other load on a shared machine barely changes). Needs `bpy`, so run it with the renderer's environment:

    .venv-render/bin/python benchmarks/bench_render.py                            # 128, 256, 512; prints a table
    .venv-render/bin/python benchmarks/bench_render.py --resolutions 256 --samples_per_core 8 --output_json out.json
    .venv-render/bin/python benchmarks/bench_render.py --device OPTIX --workers 1 --threads 1   # GPU Cycles
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import render_shadow_dataset as rsd  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_info import cpu_description, refuse_bad_arguments  # noqa: E402


def bench(resolution: int, denoise: bool, args, output_dir: Path) -> dict:
    """Throughput of `args.workers` workers over `samples_per_core * workers` samples after one warm-up each."""
    timed = args.samples_per_core * args.workers
    plan_args = argparse.Namespace(
        meshes=None,
        num_objects=None,
        num_samples=args.workers + timed,
        mode="random",
        seed=args.seed,
        theta=None,
        phi=None,
        size=None,
        test_fraction=0.0,
        lights=None,
        tracks=None,
    )
    specs = rsd.plan_samples(plan_args, rsd.object_sources(plan_args))
    settings = {
        "resolution": resolution,
        "spp": args.spp,
        "denoise": denoise,
        "device": args.device,
        "threads": args.threads,
        "seed": args.seed,
        "ambient": 0.35,
        "light_power": 500.0,
        "shadow_bits": 16,
        "drop": False,
        "format": "custom",
    }
    root = output_dir / f"{resolution}-{'denoise' if denoise else 'plain'}"
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        args.workers, mp_context=context, initializer=rsd._init_worker, initargs=(settings,)
    ) as pool:
        warm = list(
            pool.map(rsd._render_task, specs[: args.workers], [str(root)] * args.workers, ["custom"] * args.workers)
        )
        started = time.perf_counter()
        results = list(pool.map(rsd._render_task, specs[args.workers :], [str(root)] * timed, ["custom"] * timed))
        elapsed = time.perf_counter() - started
    failed = [r for r in warm + results if r["status"] != "ok"]
    if failed:
        raise RuntimeError(f"{len(failed)} sample(s) failed: {failed[0]}")
    cores = args.workers * args.threads
    cpu_seconds = sum(r["cpu_seconds"] for r in results)
    return {
        "resolution": resolution,
        "denoise": denoise,
        "spp": args.spp,
        "samples": timed,
        "seconds": round(elapsed, 3),
        "samples_per_s": round(timed / elapsed, 4),
        "samples_per_s_per_core": round(timed / elapsed / cores, 4),
        "seconds_per_sample_per_core": round(elapsed * cores / timed, 3),
        # CPU time of the workers: unaffected by other load on the machine (wall-clock numbers are not).
        "cpu_seconds_per_sample": round(cpu_seconds / timed, 3),
        "samples_per_cpu_second": round(timed / cpu_seconds, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolutions", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--samples_per_core", type=int, default=6, help="timed samples per worker, per configuration")
    parser.add_argument("--spp", type=int, default=32)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--threads", type=int, default=1, help="Cycles threads per worker")
    parser.add_argument("--device", default="CPU", choices=rsd.DEVICES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_json", default=None)
    args = parser.parse_args()
    counts = [(f"--{name}", getattr(args, name)) for name in ("samples_per_core", "spp", "workers", "threads")]
    refuse_bad_arguments(parser, counts=counts)
    try:  # the renderer's own rule (pipeline_shadow's needs torch, which Blender's Python lacks)
        for resolution in args.resolutions:
            rsd.check_render_resolution(resolution, "--resolutions")
    except ValueError as error:
        parser.error(str(error))
    if not rsd._blender_available():
        parser.error("needs Blender's Python module `bpy`: run it with .venv-render/bin/python (`make render-setup`).")

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for resolution in args.resolutions:
            for denoise in (False, True):
                rows.append(bench(resolution, denoise, args, Path(scratch)))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    load = os.getloadavg()
    print(
        f"Machine: {cpu_description()}; {args.workers} worker(s) x {args.threads} thread(s), device {args.device}; "
        f"load average after the run {load[0]:.2f}"
    )
    print(
        "| resolution | denoise | samples/s (wall) | samples/s per core (wall) | CPU s per sample | samples per CPU s |"
    )
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['resolution']}² | {'yes' if row['denoise'] else 'no'} | {row['samples_per_s']:.3f} | "
            f"{row['samples_per_s_per_core']:.3f} | {row['cpu_seconds_per_sample']:.2f} | "
            f"{row['samples_per_cpu_second']:.3f} |"
        )
    if args.output_json:
        Path(args.output_json).write_text(
            json.dumps({"machine": cpu_description(), "args": vars(args), "rows": rows}, indent=1)
        )


if __name__ == "__main__":
    main()
