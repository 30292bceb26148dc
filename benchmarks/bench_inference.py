"""Single-step inference latency of ShadowPipeline, end to end, beside a naive baseline in the same run.

Baseline: the converted UNet called directly (eager, cross-attention already skipped) between a plain VAE encode
and decode, on tensors that are already at the processing size: no pre/post-processing. Ours: `pipe(...)` from a
PIL cut-out to PIL outputs (resize, pad, encode, UNet, decode, un-pad). Models are built from the SDXL configs in
random_sdxl.py (random weights, no download).

    python benchmarks/bench_inference.py --size full --resolutions 512 1024 --repeats 15   # on a GPU
    python benchmarks/bench_inference.py --size tiny --resolutions 64 --repeats 3           # smoke test on CPU
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import pipeline_shadow  # noqa: E402, F401, I001  (first: it imports diffusers without the eager torchao import)
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler  # noqa: E402

from pipeline_shadow import (  # noqa: E402
    ShadowPipeline,
    ShadowUNet,
    decode_shadow,
    encode_latents,
)
from random_sdxl import random_unet, vae_config  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_info import cpu_model, refuse_bad_arguments  # noqa: E402


def build_pipeline(size: str, device: str, dtype: torch.dtype) -> ShadowPipeline:
    unet = ShadowUNet.from_sdxl_unet(random_unet(size)).to(device, dtype)
    vae = AutoencoderKL.from_config(vae_config(size)).to(device, dtype)
    pipe = ShadowPipeline(unet=unet, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def timed(fn, repeats: int, device: str) -> list[float]:
    fn()  # warm-up
    fn()
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000)
    return times


def naive_step(pipe: ShadowPipeline, resolution: int, device: str, dtype: torch.dtype):
    image = torch.rand(1, 3, resolution, resolution, device=device, dtype=dtype) * 2 - 1
    mask = torch.ones(1, 1, resolution // 8, resolution // 8, device=device, dtype=dtype)
    light = torch.tensor([[30.0, 0.0, 2.0]], device=device)

    @torch.no_grad()
    def run():
        object_latents = encode_latents(pipe.vae, image)
        noise = torch.randn_like(object_latents)
        velocity = pipe.unet(torch.cat([noise, mask, object_latents], 1), torch.tensor([1000.0], device=device), light)
        return decode_shadow(pipe.vae, noise - velocity.sample)

    return run


def _cutout(resolution: int) -> PIL.Image.Image:
    rgba = np.zeros((resolution, resolution, 4), np.uint8)
    rgba[resolution // 4 : 3 * resolution // 4, resolution // 3 : 2 * resolution // 3] = [180, 90, 60, 255]
    return PIL.Image.fromarray(rgba, "RGBA")


def pipeline_call(pipe: ShadowPipeline, resolution: int, output_type: str = "pil"):
    cutout = _cutout(resolution)

    def run():
        generator = torch.Generator().manual_seed(0)
        return pipe(
            cutout, theta=30.0, phi=0.0, size=2.0, height=resolution, width=resolution, generator=generator,
            output_type=output_type,
        ).shadow_maps  # fmt: skip

    return run


def slider_call(pipe: ShadowPipeline, resolution: int):
    """Re-lighting an object already encoded: the UNet and the decoder only (a light slider)."""
    prepared = pipe.encode_object(_cutout(resolution), height=resolution, width=resolution)
    phis = iter(range(10**9))

    def run():
        return pipe(object_latents=prepared, theta=30.0, phi=float(next(phis) % 360), size=2.0).shadow_maps

    return run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["tiny", "full"], default="full")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default=None, help="Default: bf16 on GPU, fp32 on CPU.")
    parser.add_argument("--fast", action="store_true", help="Also time enable_fast_inference() (torch.compile).")
    parser.add_argument("--compile_mode", default="max-autotune", help="torch.compile mode for --fast.")
    parser.add_argument("--compile_backend", default="inductor", help="torch.compile backend for --fast.")
    args = parser.parse_args(argv)
    refuse_bad_arguments(
        parser,
        device=args.device,
        resolutions=[("--resolutions", args.resolutions)],
        counts=[("--repeats", args.repeats)],
    )
    dtype_name = args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32")
    dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float32
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    pipe = build_pipeline(args.size, args.device, dtype)
    hardware = torch.cuda.get_device_name() if args.device.startswith("cuda") else cpu_model()
    print(
        f"# {hardware}, torch {torch.__version__}, {args.size} model, {dtype_name}, batch 1, median of {args.repeats}"
    )
    print("| resolution | naive (encode+UNet+decode) ms | ShadowPipeline end to end ms | slider (UNet+decode) ms |")
    print("|---|---|---|---|")
    rows = []
    for resolution in args.resolutions:
        naive = statistics.median(timed(naive_step(pipe, resolution, args.device, dtype), args.repeats, args.device))
        ours = statistics.median(timed(pipeline_call(pipe, resolution), args.repeats, args.device))
        slider = statistics.median(timed(slider_call(pipe, resolution), args.repeats, args.device))
        rows.append({"resolution": resolution, "naive_ms": naive, "pipeline_ms": ours, "slider_ms": slider})
        print(f"| {resolution}² | {naive:.1f} | {ours:.1f} | {slider:.1f} |")
    if args.fast:
        reference = {r: pipeline_call(pipe, r, "pt")() for r in args.resolutions}
        pipe.enable_fast_inference(mode=args.compile_mode, backend=args.compile_backend)
        print(f"\n# enable_fast_inference(mode={args.compile_mode!r}, backend={args.compile_backend!r})")
        print("| resolution | first call (compile) s | end to end ms | slider ms | max abs diff vs plain |")
        print("|---|---|---|---|---|")
        for row in rows:
            resolution = row["resolution"]
            start = time.perf_counter()
            fast_maps = pipeline_call(pipe, resolution, "pt")()
            compile_s = time.perf_counter() - start
            ours = statistics.median(timed(pipeline_call(pipe, resolution), args.repeats, args.device))
            slider = statistics.median(timed(slider_call(pipe, resolution), args.repeats, args.device))
            difference = float((fast_maps - reference[resolution]).abs().max())
            row.update(fast_compile_s=compile_s, fast_pipeline_ms=ours, fast_slider_ms=slider, fast_max_diff=difference)
            print(f"| {resolution}² | {compile_s:.1f} | {ours:.1f} | {slider:.1f} | {difference:.2e} |")
    return rows


if __name__ == "__main__":
    main()
