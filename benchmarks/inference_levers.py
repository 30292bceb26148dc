"""Inference-time levers on a trained pipeline, scored image by image against its plain one-step prediction.

For each folder (custom or benchmark layout) every image is predicted as `evaluate_shadow.py` predicts it -- the
loader's preprocessed tensors, one step, the same noise seeds, so the `one step` row is evaluate_shadow.py's soft IoU
-- and then again with a lever that needs no training:

- `mirror average`: the mean of that map and the map predicted for the mirror image (object and mask flipped left to
  right, phi -> 180 - phi, the noise flipped), flipped back; `mirror alone` is the second map by itself, which says
  how far the model is from treating a scene and its mirror image alike. Twice the UNet and decoder work.
- `two draws`: the mean of the maps from two noise draws (the second from a seed number the evaluation never uses).
  Twice the work.
- `gain K`: the map times K, clipped to [0, 1] (K > 1 darkens it): a fixed correction of the shadow's amount.
- `best gain per image`: the map times the K, from a grid of 0.25 .. 4, that scores best on THAT image. Not a lever --
  it reads the truth -- but a measure: how much of the gap to the truth is the shadow's amount rather than its shape.

    python benchmarks/inference_levers.py --pretrained_model_name_or_path models/shadow-small \
        --data_dirs data/families/test-{legged,pole,ring,slats,bridge} --num_seeds 3 --output_json levers.json

Each row: the mean soft IoU, and the paired difference to `one step` (mean +- standard error over the images and
seeds, and the share of them it improves); the last table pools every folder.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
# pipeline_shadow first: it imports diffusers with the optional torchao/bitsandbytes probes quietened
from pipeline_shadow import ShadowPipeline  # noqa: E402, I001
from diffusers.utils.torch_utils import randn_tensor  # noqa: E402
from machine_info import cpu_description  # noqa: E402

from dataset_loading import DatasetVerificationError, mirror_phi  # noqa: E402
from evaluate_shadow import generator_seed, soft_iou  # noqa: E402
from generate_shadows import load_pipeline  # noqa: E402
from vae_ceiling import in_order_loader  # noqa: E402

ORACLE_GAINS = np.geomspace(0.25, 4.0, 41)  # includes 1.0 (the 21st), so the oracle is never below `one step`
BASELINE = "one step"


def with_gain(maps: np.ndarray, gain: float) -> np.ndarray:
    """[B,H,W] shadow maps in [0, 1] times `gain`, clipped back to [0, 1]."""
    return np.clip(maps * gain, 0.0, 1.0)


def best_gain_iou(maps: np.ndarray, truth: np.ndarray, gains=ORACLE_GAINS) -> np.ndarray:
    """[B] the best soft IoU each map reaches against its own truth over `gains` (an oracle, not a predictor)."""
    return np.max(np.stack([soft_iou(with_gain(maps, g), truth) for g in gains]), axis=0)


def paired(candidate: list[float], baseline: list[float]) -> dict:
    """Mean, paired difference (mean, standard error) and share improved, over matched scores."""
    candidate, baseline = np.asarray(candidate), np.asarray(baseline)
    difference = candidate - baseline
    return {
        "iou": float(candidate.mean()),
        "difference": float(difference.mean()),
        "standard_error": float(difference.std(ddof=1) / np.sqrt(len(difference))) if len(difference) > 1 else 0.0,
        "better": float((difference > 0).mean()),
        "count": int(len(difference)),
    }


class LeverRun:
    """Predicts one batch of loader tensors with and without each lever; scores per image."""

    def __init__(self, pipe: ShadowPipeline, num_seeds: int, seed: int, gains: list[float]):
        self.pipe, self.num_seeds, self.seed, self.gains = pipe, num_seeds, seed, gains
        self.unet_calls = {"one step": 1, "mirror alone": 1, "mirror average": 2, "two draws": 2}

    def _maps(self, prepared, light, noise) -> np.ndarray:
        output = self.pipe(object_latents=prepared, **light, latents=noise, output_type="pt")
        return output.shadow_maps.float().cpu()[:, 0].numpy()  # [B,H,W]

    def _noise(self, prepared, indices: list[int], seed_index: int) -> torch.Tensor:
        """The starting noise `pipe(generator=...)` draws for these images under evaluate_shadow.py's seeds."""
        generators = [torch.Generator("cpu").manual_seed(generator_seed(self.seed, i, seed_index)) for i in indices]
        return randn_tensor(tuple(prepared.object_latents.shape), generator=generators, dtype=torch.float32)

    def score_batch(self, batch: dict, first_index: int) -> dict[str, list[float]]:
        indices = list(range(first_index, first_index + len(batch["id"])))
        truth = batch["shadow_map"].float()[:, 0].numpy()
        light = {key: batch[key].tolist() for key in ("theta", "phi", "size")}
        mirrored_light = {**light, "phi": [float(mirror_phi(p)) for p in light["phi"]]}
        prepared = self.pipe.encode_preprocessed(batch["object_image"], batch["mask"])
        mirrored = self.pipe.encode_preprocessed(batch["object_image"].flip(-1), batch["mask"].flip(-1))
        scores: dict[str, list[float]] = {}
        for seed_index in range(self.num_seeds):
            noise = self._noise(prepared, indices, seed_index)
            plain = self._maps(prepared, light, noise)
            mirror = self._maps(mirrored, mirrored_light, noise.flip(-1))[..., ::-1]
            second = self._maps(prepared, light, self._noise(prepared, indices, self.num_seeds + seed_index))
            variants = {
                BASELINE: plain,
                "mirror alone": mirror,
                "mirror average": (plain + mirror) / 2,
                "two draws": (plain + second) / 2,
                **{f"gain {g:g}": with_gain(plain, g) for g in self.gains},
            }
            for name, maps in variants.items():
                scores.setdefault(name, []).extend(np.atleast_1d(soft_iou(maps, truth)).tolist())
            scores.setdefault("best gain per image (oracle)", []).extend(best_gain_iou(plain, truth).tolist())
        return scores


def score_folder(run: LeverRun, data_dir: Path, resolution: int, batch_size: int, limit: int | None) -> dict:
    loader = in_order_loader(data_dir, resolution, batch_size)
    scores: dict[str, list[float]] = {}
    count = 0
    for batch in loader:
        keep = len(batch["id"]) if limit is None else min(len(batch["id"]), limit - count)
        if keep <= 0:
            break
        batch = {key: value[:keep] for key, value in batch.items()}
        for name, values in run.score_batch(batch, count).items():
            scores.setdefault(name, []).extend(values)
        count += keep
    if not count:
        raise ValueError(f"`--data_dirs {data_dir}` holds no sample.")
    return scores


def table(title: str, scores: dict[str, list[float]], unet_calls: dict[str, int]) -> tuple[str, dict]:
    rows = {name: paired(values, scores[BASELINE]) for name, values in scores.items()}
    lines = [f"### {title} ({rows[BASELINE]['count']} predictions)", "",
             "| lever | soft IoU | vs one step | better | UNet + decoder passes |", "|---|---|---|---|---|"]  # fmt: skip
    for name, row in rows.items():
        change = "" if name == BASELINE else f"{row['difference']:+.4f} ± {row['standard_error']:.4f}"
        better = "" if name == BASELINE else f"{100 * row['better']:.0f} %"
        lines.append(f"| {name} | {row['iou']:.4f} | {change} | {better} | {unet_calls.get(name, 1)} |")
    return "\n".join(lines), rows


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--pretrained_model_name_or_path", "--model", dest="model", required=True, help="a shadow pipeline folder"
    )
    parser.add_argument("--data_dirs", nargs="+", required=True, help="custom or benchmark folders")
    parser.add_argument("--resolution", type=int, default=128, help="as evaluate_shadow.py --resolution")
    parser.add_argument("--num_seeds", type=int, default=3, help="noise draws per image, as evaluate_shadow.py")
    parser.add_argument("--seed", type=int, default=0, help="as evaluate_shadow.py --seed")
    parser.add_argument("--gains", type=float, nargs="*", default=[0.8, 1.25], help="fixed gains to try")
    parser.add_argument("--limit", type=int, default=None, help="the first N images of each folder only")
    parser.add_argument("--eval_batch_size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--output_json", default=None, help="also write every row here")
    args = parser.parse_args(argv)
    for name in ("resolution", "num_seeds", "eval_batch_size", "limit", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"`--{name}` must be >= 1, got {value}.")
    if args.resolution % 8:
        parser.error(f"`--resolution` must be a multiple of 8 (the VAE's factor), got {args.resolution}.")
    if any(not g > 0 for g in args.gains):
        parser.error(f"`--gains` must be > 0, got {args.gains}.")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model, torch.float32, "cpu", "--pretrained_model_name_or_path")
    pipe.set_progress_bar_config(disable=True)
    run = LeverRun(pipe, args.num_seeds, args.seed, args.gains)
    start, pooled, results = time.perf_counter(), {}, {"folders": {}}
    with torch.inference_mode():
        for data_dir in map(Path, args.data_dirs):
            scores = score_folder(run, data_dir, args.resolution, args.eval_batch_size, args.limit)
            text, results["folders"][str(data_dir)] = table(data_dir.name, scores, run.unet_calls)
            print(text + "\n", flush=True)
            for name, values in scores.items():
                pooled.setdefault(name, []).extend(values)
    if len(args.data_dirs) > 1:
        text, results["pooled"] = table("pooled", pooled, run.unet_calls)
        print(text + "\n")
    results["settings"] = {**vars(args), "machine": cpu_description(), "seconds": round(time.perf_counter() - start)}
    print(f"{results['settings']['machine']}, {results['settings']['seconds']} s")
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(results, indent=1) + "\n")
    return results


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError, DatasetVerificationError) as error:  # bad folders or model: a message, no traceback
        sys.exit(f"inference_levers.py: error: {error}")
