"""Training-step throughput of train_shadow_sdxl.py's step beside a naive UNet-only loop, in the same run.

Variants (each on the same inputs, one lever at a time):
- naive: the UNet-only eager loop of docs/design.md §6 (latents given, AdamW, autocast on GPU);
- script, cached latents: train_shadow_sdxl.training_loss on a cached-latent batch + backward + clip + AdamW step
  (what `--cache_latents` runs): must match the naive loop within ~10 %;
- script, images: the same from an image batch, i.e. the frozen VAE encodes object and shadow every step;
- --compile: the cached-latent step with the UNet under torch.compile (and channels_last with --channels_last).

Models come from the SDXL configs in random_sdxl.py (random weights, no download). FLOPs of one UNet forward +
backward are counted with torch.utils.flop_counter, so TFLOP/s is comparable with the card's matmul peak.

    python benchmarks/bench_training.py --size full --resolution 512 --batch_size 8 --gradient_checkpointing  # GPU
    python benchmarks/bench_training.py --size tiny --resolution 64 --batch_size 2 --steps 3                   # CPU
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train_shadow_sdxl as train  # noqa: E402
from pipeline_shadow import ShadowUNet, rf_interpolate, rf_model_timestep, rf_velocity  # noqa: E402
from random_sdxl import random_unet, random_vae  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_info import cpu_model, refuse_bad_arguments  # noqa: E402


def make_batches(vae, batch_size: int, resolution: int, device) -> tuple[dict, dict]:
    """An image batch (docs/design.md §8) and the cached-latent batch of the same samples."""
    generator = torch.Generator().manual_seed(0)
    mask = torch.zeros(batch_size, 1, resolution, resolution)
    mask[..., resolution // 4 : 3 * resolution // 4, resolution // 3 : 2 * resolution // 3] = 1.0
    images = {
        "object_image": torch.rand(batch_size, 3, resolution, resolution, generator=generator) * 2 - 1,
        "mask": mask,
        "shadow_map": torch.rand(batch_size, 1, resolution, resolution, generator=generator),
        "theta": torch.full((batch_size,), 30.0),
        "phi": torch.linspace(0, 300, batch_size),
        "size": torch.full((batch_size,), 2.0),
        "id": [str(i) for i in range(batch_size)],
    }
    images["light"] = torch.stack([images[k] for k in ("theta", "phi", "size")], 1)  # [B,3], as the loader builds it
    object_latents, mask_latent, shadow_latents = train.batch_latents(vae, images, device)
    cached = {k: images[k] for k in ("light", "theta", "phi", "size", "id")}
    cached.update(object_latents=object_latents, mask_latent=mask_latent, shadow_latents=shadow_latents)
    return images, cached


def timed_steps(step, steps: int, device) -> tuple[float, float]:
    """Median seconds per step after two warm-up steps, and peak GiB (CUDA only)."""
    step()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return statistics.median(times), peak


def unet_flops(unet, batch: dict, device) -> int:
    """FLOPs of one forward + backward of the UNet on `batch`'s latents."""
    with FlopCounterMode(display=False) as counter:
        loss = naive_loss(unet, batch, device)
        loss.backward()
    unet.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def naive_loss(unet, batch: dict, device) -> torch.Tensor:
    x0 = batch["shadow_latents"]
    noise, t = torch.randn_like(x0), torch.rand(x0.shape[0], device=device)
    light = batch["light"].to(device)
    model_input = torch.cat([rf_interpolate(x0, noise, t), batch["mask_latent"], batch["object_latents"]], 1)
    velocity = unet(model_input, rf_model_timestep(t), light).sample
    return torch.nn.functional.mse_loss(velocity.float(), rf_velocity(x0, noise))


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["tiny", "small", "full"], default="full")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--train_batch_size", "--batch_size", dest="batch_size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--gradient_checkpointing", action="store_true")
    parser.add_argument("--compile", action="store_true", help="Also time the step with torch.compile(UNet).")
    parser.add_argument("--channels_last", action="store_true", help="With --compile: channels_last too.")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--peak_tflops", type=float, default=790.0, help="The card's measured bf16 matmul peak.")
    args = parser.parse_args(argv)
    refuse_bad_arguments(
        parser,
        device=args.device,
        resolutions=[("--resolution", [args.resolution])],
        counts=[("--train_batch_size", args.batch_size), ("--steps", args.steps)],
    )
    device = torch.device(args.device)
    autocast_dtype = torch.bfloat16 if device.type == "cuda" else None
    unet = ShadowUNet.from_sdxl_unet(random_unet(args.size)).to(device).train()
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    vae = random_vae(args.size).to(device).eval().requires_grad_(False)
    images, cached = make_batches(vae, args.batch_size, args.resolution, device)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-5, fused=device.type == "cuda")
    script_args = train.parse_args(["--train_data_dir", "unused", "--timestep_sampling", "uniform"])
    generator = torch.Generator(device=device).manual_seed(0)

    def autocast():
        if autocast_dtype is None:
            return torch.autocast("cpu", enabled=False)
        return torch.autocast(device.type, dtype=autocast_dtype)

    def naive_step():
        with autocast():
            loss = naive_loss(unet, cached, device)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def script_step(batch):
        def step():
            with autocast():
                loss = train.training_loss(script_args, unet, vae, batch, generator, device)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    flops = unet_flops(unet, cached, device)
    variants = [("naive UNet-only loop", naive_step), ("script, cached latents", script_step(cached))]
    variants.append(("script, images (VAE encode every step)", script_step(images)))
    rows = []
    for name, step in variants:
        seconds, peak = timed_steps(step, args.steps, device)
        rows.append({"variant": name, "s_per_step": seconds, "peak_gib": peak})
    if args.compile:
        if args.channels_last:
            unet.to(memory_format=torch.channels_last)
        start = time.perf_counter()
        unet.unet = torch.compile(unet.unet)
        script_step(cached)()
        compile_s = time.perf_counter() - start
        seconds, peak = timed_steps(script_step(cached), args.steps, device)
        label = "script, cached, compiled" + (" + channels_last" if args.channels_last else "")
        rows.append({"variant": label, "s_per_step": seconds, "peak_gib": peak, "compile_s": compile_s})

    hardware = torch.cuda.get_device_name() if device.type == "cuda" else cpu_model()
    print(
        f"# {hardware}, torch {torch.__version__}, {args.size} shadow UNet, {args.resolution}², batch "
        f"{args.batch_size}, checkpointing {'on' if args.gradient_checkpointing else 'off'}, "
        f"{'bf16 autocast' if autocast_dtype else 'fp32'}, median of {args.steps}; UNet fwd+bwd {flops / 1e12:.1f} TFLOP"
    )
    print("| variant | s/step | samples/s | vs naive | peak GiB | TFLOP/s | % of peak |")
    print("|---|---|---|---|---|---|---|")
    baseline = rows[0]["s_per_step"]
    for row in rows:
        tflops = flops / row["s_per_step"] / 1e12
        row.update(samples_per_s=args.batch_size / row["s_per_step"], tflops=tflops)
        print(
            f"| {row['variant']} | {row['s_per_step']:.3f} | {row['samples_per_s']:.1f} | "
            f"{baseline / row['s_per_step']:.2f}x | {row['peak_gib']:.1f} | {tflops:.1f} | "
            f"{100 * tflops / args.peak_tflops:.0f} % |"
        )
    if "compile_s" in rows[-1]:
        print(f"compile + first step: {rows[-1]['compile_s']:.0f} s")
    vae_share = 1 - rows[1]["s_per_step"] / rows[2]["s_per_step"]
    print(f"VAE share of the image-batch step: {100 * vae_share:.0f} %")
    return rows


if __name__ == "__main__":
    main()
