#!/usr/bin/env bash
# Several lights: the renders, the composition check, the model's scores and the README's contact sheet
# (README "Several lights and environment maps"). Run from the repository root after `make setup render-setup`.
#
#   DATA=data/multi_light MODEL=models/shadow-small bash recipes/multi_light.sh
set -euo pipefail
DATA=${DATA:-data/multi_light}
MODEL=${MODEL:-models/shadow-small}
R=.venv-render/bin/python
P=.venv/bin/python

# 0. Blender's own ground irradiance, one light at a time, against area_light_irradiance (no object).
$R benchmarks/render_ground_irradiance.py --output_dir "$DATA-irradiance"
$P benchmarks/bench_multi_light.py irradiance --data "$DATA-irradiance"

# 1. 12 unseen procedural objects (seed 2100; the shipped model saw seeds 0 and 1000) under four light sets each:
#    one light, two, three, and the example sky's three lights; each light's own map too. 128 px, 32 spp.
ENVIRONMENT=$($P benchmarks/bench_multi_light.py environment-lights)
nice -n 19 $R render_shadow_dataset.py --output_dir "$DATA" --num_objects 12 --seed 2100 --resolution 128 --spp 32 \
    --threads 2 --single_light_maps --light_sets "30,0,2" "30,0,2,1;25,140,5,0.6" \
    "35,300,2,1;20,90,6,0.5;15,200,8,0.4" "$ENVIRONMENT"

# 2. How well the TRUE single-light maps compose into the TRUE multi-light map (no model).
$P benchmarks/bench_multi_light.py composition --data "$DATA" --output_json "$DATA-composition.json"

# 3. The model: composed predictions against the renderer, and each light alone on the same objects (3 seeds).
$P evaluate_shadow.py --pretrained_model_name_or_path "$MODEL" --light_sets_dir "$DATA" --num_seeds 3 --output_dir "$DATA-eval"

# 4. The contact sheet: object 0 under each light set, renderer above, model below.
$P benchmarks/bench_multi_light.py sheet --data "$DATA" --pretrained_model_name_or_path "$MODEL" --out docs/images/multi_light_contact_sheet.png
