#!/usr/bin/env bash
# The recipe of the embedded default model (models/shadow-small): every command that makes it, in order.
# Run from the repository root after `make setup render-setup`. On a GPU machine accelerate uses the GPU for the
# training steps; the renderer uses the CPU unless you add `--device OPTIX` (or CUDA).
#
#   DATA=data/synth128 WORK=work/small bash recipes/small_model.sh
set -euo pipefail
DATA=${DATA:-data/synth128}
WORK=${WORK:-work/small}
R=.venv-render/bin/python
P=.venv/bin/python
TRAIN_VAE=("$P" train_vae.py --resume_from_checkpoint latest)  # run again, a stopped VAE run continues
WORKERS=${WORKERS:-$(nproc)}

# 1. Synthetic renders at 128 px: 800 procedural objects x 3 random lights, split BY OBJECT (10 % held out),
#    plus the benchmark's three track designs for 10 further, unseen objects (another seed).
$R render_shadow_dataset.py --output_dir "$DATA" --num_samples 2400 --num_objects 800 --resolution 128 --spp 32 \
    --workers "$WORKERS" --threads 1 --test_fraction 0.1 --seed 0
$R render_shadow_dataset.py --output_dir "$DATA-tracks" --tracks --num_objects 10 --resolution 128 --spp 32 \
    --workers "$WORKERS" --threads 1 --format benchmark --tar --seed 1000
$P dataset_loading.py verify "$DATA/train"

# 2. The small VAE (objects on white and shadow maps) on 64 px crops, in two stages; latent scale calibrated.
"${TRAIN_VAE[@]}" --train_data_dir "$DATA/train" --resolution 128 --crop_size 64 --output_dir "$WORK/vae-stage1" \
    --max_train_steps 900 --train_batch_size 8 --learning_rate 1e-3
"${TRAIN_VAE[@]}" --train_data_dir "$DATA/train" --resolution 128 --crop_size 64 --output_dir "$WORK/vae" \
    --pretrained_vae_model_name_or_path "$WORK/vae-stage1" --max_train_steps 600 --train_batch_size 8 --learning_rate 3e-4 \
    --seed 1

# 3. A small SDXL-shaped model with that VAE, converted and trained by the project's own training script.
$P random_sdxl.py --size small --vae "$WORK/vae" --output_dir "$WORK/small-sdxl"
$P -m accelerate.commands.launch --num_processes 1 train_shadow_sdxl.py \
    --pretrained_model_name_or_path "$WORK/small-sdxl" --dataset_type custom --train_data_dir "$DATA/train" \
    --resolution 128 --train_batch_size 16 --learning_rate 3e-4 --lr_warmup_steps 200 --max_train_steps 5000 \
    --timestep_sampling shifted --random_flip --cache_latents --latent_cache_dir "$WORK/latents" \
    --checkpointing_steps 500 --validation_steps 500 --logging_steps 50 --dataloader_num_workers 0 --seed 0 --report_to none --output_dir "$WORK/run"

# 4. Continue from the best pipeline with a cosine decay to 0 (fresh AdamW state; the same --split_seed keeps the
#    validation objects out of training), then fine-tune the VAE's decoder on that model's one-step predictions for
#    the training renders, against the true maps (encoder frozen: the latents and the model stay valid).
$P -m accelerate.commands.launch --num_processes 1 train_shadow_sdxl.py \
    --pretrained_model_name_or_path "$WORK/run/best" --dataset_type custom --train_data_dir "$DATA/train" \
    --resolution 128 --train_batch_size 16 --learning_rate 3e-4 --lr_scheduler cosine --lr_warmup_steps 100 \
    --max_train_steps 9000 --timestep_sampling shifted --random_flip --cache_latents --latent_cache_dir "$WORK/latents" \
    --checkpointing_steps 1000 --validation_steps 1000 --logging_steps 100 --dataloader_num_workers 0 --seed 0 --report_to none \
    --output_dir "$WORK/run2"
#    First on 64 px crops (4x cheaper), then briefly on whole images, where the decoder's attention sees all 16 x 16
#    latents as it does at inference.
"${TRAIN_VAE[@]}" --train_data_dir "$DATA/train" --resolution 128 --crop_size 64 --pretrained_vae_model_name_or_path "$WORK/vae" \
    --decoder_only --prediction_model "$WORK/run2/best" --output_dir "$WORK/vae-decoder-crops" --max_train_steps 1500 \
    --train_batch_size 16 --learning_rate 3e-4 --seed 2
"${TRAIN_VAE[@]}" --train_data_dir "$DATA/train" --resolution 128 --pretrained_vae_model_name_or_path "$WORK/vae-decoder-crops" \
    --decoder_only --prediction_model "$WORK/run2/best" --output_dir "$WORK/vae-decoder" --max_train_steps 600 \
    --train_batch_size 8 --learning_rate 1e-4 --seed 3

# 5. Ship: that pipeline with the fine-tuned decoder, its UNet stored in fp16 (it loads as fp32) to stay under 30 MB;
#    then evaluate the shipped folder itself on the unseen-object split and the track designs, so the model card's
#    numbers are the shipped weights' numbers.
rm -rf models/shadow-small
$P -c "
import torch
from diffusers import AutoencoderKL
from pipeline_shadow import ShadowPipeline
pipe = ShadowPipeline.from_pretrained('$WORK/run2/best', vae=AutoencoderKL.from_pretrained('$WORK/vae-decoder'))
pipe.unet.to(torch.float16)
pipe.save_pretrained('models/shadow-small')
"
$P evaluate_shadow.py --pretrained_model_name_or_path models/shadow-small --dataset_type custom --data_dir "$DATA/test" --num_seeds 3 \
    --resolution 128 --output_dir "$WORK/eval-shipped-test" --overwrite
$P evaluate_shadow.py --pretrained_model_name_or_path models/shadow-small --dataset_type benchmark --data_dir "$DATA-tracks" --num_seeds 3 \
    --resolution 128 --output_dir "$WORK/eval-shipped-tracks" --overwrite
du -sh models/shadow-small
