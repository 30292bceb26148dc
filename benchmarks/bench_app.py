"""Server time per slider move of the light-control page (app.py), beside the re-encode-every-move baseline.

Live (what the page does): the object is encoded once per upload (`prepare_object` -> `encode_object`); each move runs
`render_light` (UNet + VAE decoder on the stored latents, un-pad, compositing, shadow layer) and `save_rendering`
(the three PNGs the page serves). Baseline (the full path): every move reads, pads and re-encodes the object first.
Both run in the same loop, interleaved move by move, on the shipped example cut-outs resized to `--input_size`
(default: the model's processing resolution), over a sweep of phi, so machine load hits both alike. Gradio's own
serialisation and the HTTP round trip are not included (the browser test drives those).

    python benchmarks/bench_app.py                       # the embedded default, 1 and 2 torch threads
    python benchmarks/bench_app.py --model PATH --device cuda --moves 50
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import PIL.Image
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from machine_info import cpu_description  # noqa: E402

import app  # noqa: E402
from pipeline_shadow import Light  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--pretrained_model_name_or_path",
        "--model",
        dest="model",
        default=str(app.DEFAULT_MODEL),
        help="Shadow pipeline folder or Hub id.",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[1, 2], help="torch CPU thread counts to compare (interleaved)."
    )
    parser.add_argument("--moves", type=int, default=24, help="Timed slider moves per object and path.")
    parser.add_argument(
        "--input_size", type=int, default=None, help="Cut-out side in px (default: the model's resolution)."
    )
    parser.add_argument("--objects", type=int, default=None, help="Use the first N example cut-outs (default: all).")
    parser.add_argument("--theta", type=float, default=30.0)
    parser.add_argument("--size", type=float, default=2.0)
    args = parser.parse_args(argv)
    if args.moves < 1 or min(args.threads) < 1:
        parser.error("--moves and --threads must be >= 1.")
    return args


def _ms(seconds: list[float]) -> dict:
    ordered = sorted(seconds)
    return {
        "median_ms": statistics.median(ordered) * 1000,
        "p90_ms": ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))] * 1000,
        "mean_ms": statistics.fmean(ordered) * 1000,
    }


def _timed(function, *args) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads) of one call."""
    start, start_cpu = time.perf_counter(), time.process_time()
    function(*args)
    return time.perf_counter() - start, time.process_time() - start_cpu


def live_move(pipe, prepared: app.PreparedObject, cutout, light: Light) -> None:
    """What the page does on a slider move: the stored latents, no encoding."""
    app.save_rendering(app.render_light(pipe, prepared, light), prepared, light)


def full_move(pipe, prepared: app.PreparedObject, cutout, light: Light) -> None:
    """The baseline: read, pad and re-encode the object on every move, then the same."""
    fresh = app.prepare_object(pipe, cutout, stem=prepared.stem)
    app.save_rendering(app.render_light(pipe, fresh, light), fresh, light)


def main(argv=None) -> dict:
    args = parse_args(argv)
    model = app.load_model(args.model, args.device)
    if model.error:
        raise SystemExit(model.error)
    pipe = model.pipe
    side = args.input_size or pipe.default_resolution
    cutouts = {
        path.stem: PIL.Image.open(path).convert("RGBA").resize((side, side), PIL.Image.LANCZOS)
        for path in sorted(app.EXAMPLES_DIR.glob("*.png"))[: args.objects]
    }
    load_before = os.getloadavg()[0]
    samples = {(threads, path): ([], []) for threads in args.threads for path in ("live", "full")}  # (wall, cpu)
    for stem, cutout in cutouts.items():
        prepared = app.prepare_object(pipe, cutout, stem=stem)
        app.render_light(pipe, prepared, app.DEFAULT_LIGHT)  # warm-up (first-call allocations)
        for move in range(args.moves):
            light = Light(args.theta, 360.0 * move / args.moves, args.size)
            for threads in args.threads:  # interleaved, so machine load hits every variant alike
                torch.set_num_threads(threads)
                for path, function in (("live", live_move), ("full", full_move)):
                    wall, cpu = _timed(function, pipe, prepared, cutout, light)
                    samples[threads, path][0].append(wall)
                    samples[threads, path][1].append(cpu)
    load_after = os.getloadavg()[0]

    rows = [
        {"threads": threads, "path": path, **_ms(walls), "cpu_median_ms": statistics.median(cpus) * 1000}
        for (threads, path), (walls, cpus) in samples.items()
    ]
    result = {
        "model": model.name,
        "device": args.device,
        "resolution": pipe.default_resolution,
        "input_size": side,
        "objects": len(cutouts),
        "moves": len(cutouts) * args.moves,
        "rows": rows,
        "load_average": (load_before, load_after),
        "machine": cpu_description(),
        "torch": torch.__version__,
    }
    print(
        f"Light-control page, server time per slider move: {result['model']} ({result['resolution']} px) on "
        f"{args.device}; {len(cutouts)} example cut-outs at {side} px x {args.moves} moves (phi sweep), every "
        f"variant interleaved move by move.\nMachine: {result['machine']}; torch {result['torch']}; "
        f"{platform.platform()}; 1-min load average {load_before:.1f} before, {load_after:.1f} after.\n"
    )
    labels = {
        "live": "live: UNet + decoder on the stored latents, compositing, 3 PNGs",
        "full": "baseline: re-encode the object on every move, then the same",
    }
    print("| path | torch threads | median ms | p90 ms | mean ms | CPU time ms (median, all threads) |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {labels[row['path']]} | {row['threads']} | {row['median_ms']:.0f} | {row['p90_ms']:.0f} | "
            f"{row['mean_ms']:.0f} | {row['cpu_median_ms']:.0f} |"
        )
    return result


if __name__ == "__main__":
    main()
