#!/bin/bash
# Training on your own stacks (linblur train defocus --content-from), measured in session 15 (docs/results/defocus.md,
# "Training on your own stacks"): the shipped model continued for 600 steps of its last leg's recipe, once with the
# in-focus planes of 16 synthetic bbbc006-like fields (both channels: 32 stacks) as content, once with the bundled
# pictures (the control), then both evaluated on the held-out test images.
# Usage: bash docs/results/defocus_own_content.sh [RUNS_DIR]    (two legs of 8-30 min each on the 2-core CPU)
set -e
cd "$(dirname "$0")/../.."
source .venv/bin/activate
R=${1:-runs/own}
mkdir -p "$R"
linblur synth "$R/own.zarr" --fields 16 --shape 256 256 --seed 7 --no-progress -q
COMMON="--init defocus-default --content mixed --crop 96 --render-size 128 --batch-size 8 --pool-size 512 \
 --low-contrast 0.5 --noise-input map --full-range 0.75 --amp bf16 --photons 100 50000 --lr 2.5e-4 --seed 10 \
 --steps 600 --threads 2 --device cpu --val-every 100 --ckpt-every 100 --no-progress --max-minutes 40"
nice -n 5 linblur train defocus $COMMON --content-from "$R/own.zarr" --content-stacks 32 --out "$R/own"
nice -n 5 linblur train defocus $COMMON --out "$R/control"
nice -n 5 linblur evaluate defocus --model "own stacks (+600)=$R/own/model.safetensors" \
  --model "bundled pictures (+600)=$R/control/model.safetensors" --model shipped=defocus-default \
  --no-baselines --threads 2 --device cpu --out "$R/ev"
