#!/usr/bin/env bash
# The family-held-out test split: objects of whole procedural FAMILIES that never occur in training (not only unseen
# objects of seen families), rendered clean -- 256 Cycles samples per pixel, no denoiser -- then scored per family:
# the model's one-step predictions (evaluate_shadow.py) and the VAE's own round trip of the true maps
# (benchmarks/vae_ceiling.py), the ceiling any model using that VAE can reach.
# Run from the repository root after `make setup render-setup`.
#
#   bash recipes/family_split.sh                                   # render + evaluate, 8 objects x 3 lights a family
#   STAGES="render noise evaluate" bash recipes/family_split.sh     # + the target-noise control (32 spp twins)
#   STAGES="render" OBJECTS=40 TRACK_OBJECTS=10 bash recipes/family_split.sh
#   STAGES="train-data" TRAIN_SAMPLES=30000 bash recipes/family_split.sh   # a training set WITHOUT the test families
set -euo pipefail
DATA=${DATA:-data/families}
WORK=${WORK:-work/families}
MODEL=${MODEL:-models/shadow-small}
STAGES=${STAGES:-render evaluate}
TEST_FAMILIES=${TEST_FAMILIES:-legged pole ring slats bridge}  # held out; `classic` below is the seen-family control
OBJECTS=${OBJECTS:-8}             # objects per family
LIGHTS=${LIGHTS:-3}               # random lights per object (theta 0..45, phi 0..359, size 2..8)
SPP=${SPP:-256}                   # clean targets: 256 spp, no denoising
RESOLUTION=${RESOLUTION:-128}     # the embedded default's resolution
HIRES=${HIRES:-256}               # the first HIRES_SAMPLES samples again at this size (same objects, lights, views)
HIRES_SAMPLES=${HIRES_SAMPLES:-4}
NOISE_FAMILIES=${NOISE_FAMILIES:-legged classic}  # noise stage: these test folders again at NOISE_SPP (the same scenes)
NOISE_SPP=${NOISE_SPP:-32}         # the spp of recipes/small_model.sh, i.e. of the shipped model's data and test split
TRACK_OBJECTS=${TRACK_OBJECTS:-0}  # > 0: also the benchmark's three track designs for this many objects a family
TRACK_SPP=${TRACK_SPP:-$SPP}       # the tracks' 30 renders an object: e.g. TRACK_SPP=64 TRACK_DENOISE=1 (4x cheaper,
TRACK_DENOISE=${TRACK_DENOISE:-0}  # ... OpenImageDenoise on both passes) instead of 256 spp
TRACK_FAMILIES=${TRACK_FAMILIES:-$TEST_FAMILIES}
TRAIN_SAMPLES=${TRAIN_SAMPLES:-0}  # train-data stage: samples of the other families
# ... drawn from these (the ten families every training set before the sixth round was drawn from, named so that a
# later family added to the generator leaves those sets as they were; the sixth round's set: wire glyph shelf sticks)
TRAIN_FAMILIES=${TRAIN_FAMILIES:-single stack leaning cluster table arch ladder lathe frame figure}
TRAIN_LIGHTS=${TRAIN_LIGHTS:-2}    # ... random lights per training object (more objects beat more lights per object)
TRAIN_SEED=${TRAIN_SEED:-0}        # ... their render seed (every set up to stage 15 used 0; stage 16 uses 1)
SEED=${SEED:-1000}                # test objects; the training data uses seed 0, as recipes/small_model.sh
R="nice -n 19 ${RENDER_PYTHON:-.venv-render/bin/python} render_shadow_dataset.py"
P=${PYTHON:-.venv/bin/python}
WORKERS=${WORKERS:-1}
THREADS=${THREADS:-$(nproc)}
COMMON=(--spp "$SPP" --workers "$WORKERS" --threads "$THREADS" --seed "$SEED" --log_level WARNING)

family_flags() {  # `classic`: the generator's default families (what the shipped model was trained on)
    if [ "$1" = classic ]; then echo ""; else echo "--families $1"; fi
}

has_stage() { [[ " $STAGES " == *" $1 "* ]]; }

if has_stage render; then
    for family in $TEST_FAMILIES classic; do
        # shellcheck disable=SC2046
        $R --output_dir "$DATA/test-$family" $(family_flags "$family") --num_objects "$OBJECTS" \
            --num_samples $((OBJECTS * LIGHTS)) --resolution "$RESOLUTION" "${COMMON[@]}"
        if [ "$HIRES_SAMPLES" -gt 0 ]; then  # sample i is a function of (seed, i): the same scene, twice the pixels
            # shellcheck disable=SC2046
            $R --output_dir "$DATA/test-$family-$HIRES" $(family_flags "$family") --num_objects "$OBJECTS" \
                --num_samples "$HIRES_SAMPLES" --resolution "$HIRES" "${COMMON[@]}"
        fi
    done
    for family in $TRACK_FAMILIES; do
        if [ "$TRACK_OBJECTS" -gt 0 ]; then
            denoise=(); if [ "$TRACK_DENOISE" = 1 ]; then denoise=(--denoise); fi
            # shellcheck disable=SC2046
            $R --output_dir "$DATA/tracks-$family" $(family_flags "$family") --tracks --num_objects "$TRACK_OBJECTS" \
                --resolution "$RESOLUTION" --format benchmark "${COMMON[@]}" --spp "$TRACK_SPP" "${denoise[@]}"
        fi
    done
fi

if has_stage noise; then  # how much a 32 spp target differs from the clean one, and what that costs a model's score
    for family in $NOISE_FAMILIES; do
        # shellcheck disable=SC2046
        $R --output_dir "$DATA/test-$family-${NOISE_SPP}spp" $(family_flags "$family") --num_objects "$OBJECTS" \
            --num_samples $((OBJECTS * LIGHTS)) --resolution "$RESOLUTION" "${COMMON[@]}" --spp "$NOISE_SPP"
    done
fi

if has_stage train-data; then  # families other than the held-out ones, split by object for validation
    for family in $TEST_FAMILIES; do  # the split's promise: no test family in training
        [[ " $TRAIN_FAMILIES " != *" $family "* ]] || { echo "TRAIN_FAMILIES holds test family $family" >&2; exit 2; }
    done
    # shellcheck disable=SC2086
    $R --output_dir "$DATA/train" --families $TRAIN_FAMILIES --num_samples "$TRAIN_SAMPLES" \
        --num_objects $((TRAIN_SAMPLES / TRAIN_LIGHTS)) --resolution "$RESOLUTION" --spp 32 --test_fraction 0.05 \
        --workers "$WORKERS" --threads "$THREADS" --seed "$TRAIN_SEED" --log_level WARNING
fi

if has_stage evaluate; then
    folders=() hires=() controls=()
    for family in $TEST_FAMILIES classic; do
        if [ "$family" = classic ]; then controls+=("$DATA/test-$family"); else folders+=("$DATA/test-$family"); fi
        $P evaluate_shadow.py --model "$MODEL" --dataset_type custom --data_dir "$DATA/test-$family" --num_seeds 3 \
            --resolution "$RESOLUTION" --output_dir "$WORK/eval/test-$family"
        if [ -d "$DATA/tracks-$family" ]; then
            $P evaluate_shadow.py --model "$MODEL" --dataset_type benchmark --data_dir "$DATA/tracks-$family" \
                --num_seeds 3 --resolution "$RESOLUTION" --output_dir "$WORK/eval/tracks-$family"
            folders+=("$DATA/tracks-$family")
        fi
        if [ "$HIRES_SAMPLES" -gt 0 ]; then hires+=("$DATA/test-$family-$HIRES"); fi
    done
    # The VAE's round trip of the true maps at the model's resolution, beside the model's one-step scores; one row
    # pooled over the unseen families (random lights and track designs), the seen-family control below it.
    $P benchmarks/vae_ceiling.py --vae "$MODEL/vae" --data_dirs "${folders[@]}" --control_dirs "${controls[@]}" \
        --resolution "$RESOLUTION" --eval_root "$WORK/eval" --output_json "$WORK/vae_ceiling.json"
    noisy=() clean=()
    for family in $NOISE_FAMILIES; do
        if [ -d "$DATA/test-$family-${NOISE_SPP}spp" ]; then
            noisy+=("$DATA/test-$family-${NOISE_SPP}spp") clean+=("$DATA/test-$family")
            $P evaluate_shadow.py --model "$MODEL" --dataset_type custom --data_dir "$DATA/test-$family-${NOISE_SPP}spp" \
                --num_seeds 3 --resolution "$RESOLUTION" --output_dir "$WORK/eval/test-$family-${NOISE_SPP}spp"
        fi
    done
    if [ ${#noisy[@]} -gt 0 ]; then  # the noisy twins scored against their own maps and against the clean ones
        $P benchmarks/vae_ceiling.py --vae "$MODEL/vae" --data_dirs "${noisy[@]}" --reference_dirs "${clean[@]}" \
            --eval_root "$WORK/eval" --output_json "$WORK/vae_ceiling_noise.json"
    fi
    if [ "$HIRES_SAMPLES" -gt 0 ]; then  # the same first scenes at both resolutions: 16x16 vs 32x32 latents
        $P benchmarks/vae_ceiling.py --vae "$MODEL/vae" --data_dirs "${folders[@]}" "${controls[@]}" "${hires[@]}" \
            --limit "$HIRES_SAMPLES" --output_json "$WORK/vae_ceiling_${RESOLUTION}_vs_${HIRES}.json"
    fi
fi
