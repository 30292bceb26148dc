"""Two models' evaluate_shadow.py outputs on the same folders, side by side and paired image by image.

For each folder name given, `<baseline_root>/<name>/records.jsonl` and `<candidate_root>/<name>/records.jsonl` (the
two models evaluated on the same data): per folder each model's soft IoU; pooled over the folders each model's soft
IoU, median direction error and wrong-side rate (over all their records, as `vae_ceiling.py`'s pooled row); and the
paired difference: per image the candidate's seed-mean soft IoU minus the baseline's, its mean ± standard error and
the share of images the candidate scores higher on. The paired standard error is the one that says whether a
difference of two models on the same images is more than noise.

    python benchmarks/compare_evals.py --baseline_root work/eval-old --candidate_root work/eval-new \
        --folders test-legged test-pole test-ring test-slats test-bridge
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from vae_ceiling import pooled_records  # noqa: E402

from evaluate_shadow import ALL_TRACK, control_summary, summarize  # noqa: E402


def image_scores(records: list[dict]) -> dict[str, float]:
    """{record id: soft IoU averaged over its seeds}."""
    by_id: dict[str, list[float]] = {}
    for record in records:
        by_id.setdefault(str(record["id"]), []).append(float(record["iou"]))
    return {key: float(np.mean(values)) for key, values in by_id.items()}


def paired_difference(baseline: dict[str, float], candidate: dict[str, float]) -> dict:
    """Candidate minus baseline over the images both scored: mean, standard error, share of images it is higher on."""
    common = sorted(set(baseline) & set(candidate))
    if len(common) < 2:
        raise ValueError(f"the two evaluations share {len(common)} image(s); a paired comparison needs at least 2.")
    differences = np.array([candidate[key] - baseline[key] for key in common])
    return {
        "images": len(common),
        "mean": float(differences.mean()),
        "standard_error": float(differences.std(ddof=1) / np.sqrt(len(common))),
        "candidate_higher": float((differences > 0).mean()),
    }


def pooled_scores(records: list[dict]) -> dict:
    summary, control = summarize(records)[ALL_TRACK], control_summary(records)[ALL_TRACK]
    return {
        "iou": summary["iou"]["mean"],
        "direction_median_deg": control["direction_abs_error_median_deg"],
        "wrong_side_rate": control["wrong_side_rate"],
    }


def compare(baseline_root: Path, candidate_root: Path, folders: list[str]) -> dict:
    for root in (baseline_root, candidate_root):
        missing = [name for name in folders if not (root / name / "records.jsonl").is_file()]
        if missing:
            raise ValueError(f"no evaluate_shadow.py records.jsonl under {root} for: {', '.join(missing)}.")
    pooled = {
        side: pooled_records([root / name for name in folders])
        for side, root in (("baseline", baseline_root), ("candidate", candidate_root))
    }
    per_folder = {}
    for name in folders:
        prefix = f"{name}/"
        scores = {
            side: image_scores([r for r in records if r["id"].startswith(prefix)]) for side, records in pooled.items()
        }
        per_folder[name] = {side: float(np.mean(list(s.values()))) for side, s in scores.items()}
    return {
        "folders": per_folder,
        "pooled": {side: pooled_scores(records) for side, records in pooled.items()},
        "paired": paired_difference(*(image_scores(pooled[side]) for side in ("baseline", "candidate"))),
    }


def markdown(result: dict) -> str:
    lines = ["| folder | baseline soft IoU | candidate soft IoU |", "|---|---|---|"]
    lines += [f"| {name} | {row['baseline']:.3f} | {row['candidate']:.3f} |" for name, row in result["folders"].items()]
    for side in ("baseline", "candidate"):
        row = result["pooled"][side]
        lines.append(
            f"| pooled, {side} | {row['iou']:.3f} | median direction error {row['direction_median_deg']:.1f}°, "
            f"wrong side {100 * row['wrong_side_rate']:.1f} % |"
        )
    paired = result["paired"]
    lines.append(
        f"\nPaired over {paired['images']} images: candidate − baseline {paired['mean']:+.4f} ± "
        f"{paired['standard_error']:.4f} (standard error), higher on {100 * paired['candidate_higher']:.0f} % of them."
    )
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--baseline_root", required=True, help="evaluate_shadow.py outputs of the baseline, one a folder"
    )
    parser.add_argument("--candidate_root", required=True, help="the same folders, evaluated with the candidate")
    parser.add_argument("--folders", nargs="+", required=True, help="folder names under both roots, pooled together")
    parser.add_argument("--output_json", default=None)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    try:
        result = compare(Path(args.baseline_root), Path(args.candidate_root), args.folders)
    except ValueError as error:
        sys.exit(f"compare_evals.py: error: {error}")
    print(markdown(result))
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
