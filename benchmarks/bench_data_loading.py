# Copyright 2026 The controllable-shadow-generation authors. Licensed under the Apache License, Version 2.0.
"""Samples/s of the data path: decoding PNGs + resize (the image path), per DataLoader worker count, against reading
cached latents. Builds a synthetic custom dataset of `--source_size` PNGs (the paper renders at 1024 px) in a temp
folder; the cache is built with a tiny random VAE, whose latents have SDXL's shape (4 channels, 1/8 size), so the READ
numbers are representative while the build time is not (the real VAE encode is a GPU cost, see docs/design.md §6).

    python benchmarks/bench_data_loading.py                       # 256² and 512², prints a markdown table
    python benchmarks/bench_data_loading.py --sizes 256 512 1024  # the numbers in BENCHMARKS.md (~8 min on 2 cores)
    python benchmarks/bench_data_loading.py --sizes 512 --workers 0 4 8 --num_samples 128 --output_json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))

from data_factory import make_custom_dataset  # noqa: E402

from dataset_loading import build_latent_cache, create_dataloaders, open_shadow_dataset  # noqa: E402
from random_sdxl import random_vae  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_info import cpu_description  # noqa: E402


def machine_description() -> str:
    return f"{cpu_description()}, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def samples_per_second(loader, epochs: int) -> float:
    """Steady-state throughput over `epochs` whole epochs, after one untimed warm-up epoch (worker start-up, page
    cache). Workers are persistent, so each timed epoch starts with empty prefetch queues: nothing is done untimed."""
    for _ in loader:
        pass
    started, count = time.perf_counter(), 0
    for _ in range(epochs):
        for batch in loader:
            count += len(batch["id"])
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="processing resolutions")
    parser.add_argument("--source_size", type=int, default=1024, help="side of the PNGs on disk")
    parser.add_argument("--num_samples", type=int, default=48)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train_batch_size", "--batch_size", dest="batch_size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--output_json", default=None)
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        data_dir = make_custom_dataset(Path(tmp) / "data", n=args.num_samples, size=args.source_size)
        print(f"Made {args.num_samples} samples of {args.source_size}px in {time.perf_counter() - started:.1f} s.")
        vae = random_vae("tiny", seed=0).eval()
        for size in args.sizes:
            common = dict(batch_size=args.batch_size, image_size=size, val_fraction=0, seed=0)
            for workers in args.workers:
                loader, _ = create_dataloaders("custom", data_dir, num_workers=workers, **common)
                rate = samples_per_second(loader, args.epochs)
                rows.append(
                    {"path": "images (PNG decode + resize)", "size": size, "workers": workers, "samples_s": rate}
                )
                print(rows[-1])
            cached = {"cache_latents": True, "vae": vae, "latent_cache_dir": Path(tmp) / "cache"}
            started = time.perf_counter()
            dataset = open_shadow_dataset("custom", data_dir, image_size=size)
            build_latent_cache(dataset, vae, cached["latent_cache_dir"], batch_size=args.batch_size)
            build_s = time.perf_counter() - started
            for workers in args.workers:
                loader, _ = create_dataloaders(dataset, num_workers=workers, **cached, **common)
                rate = samples_per_second(loader, args.epochs)
                rows.append({"path": "cached latents", "size": size, "workers": workers, "samples_s": rate})
                print(rows[-1], f"(cache built in {build_s:.1f} s with the tiny VAE)")

    machine = machine_description()
    print(f"\nMachine: {machine}")
    print(
        f"Source PNGs {args.source_size}px, batch size {args.batch_size}, {args.num_samples} samples x {args.epochs} epochs"
    )
    print("| path | resolution | workers | samples/s |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['path']} | {row['size']}² | {row['workers']} | {row['samples_s']:.1f} |")
    if args.output_json:
        Path(args.output_json).write_text(json.dumps({"machine": machine, "args": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
