#!/bin/bash
# The training chain of the defocus-default shipped before the bf16 chain (docs/results/defocus.md, "Noise-aware model trained from scratch"):
# the four legs of the previous recipe, each with --noise-input map --full-range 0.75. 53.2 min on one thread of
# the 2-core development CPU (nice -n 5, the other core busy). Usage: bash docs/results/defocus_noise_chain.sh
set -e
cd "$(dirname "$0")/../.."
source .venv/bin/activate
source docs/results/leg_finished.sh
C="--noise-input map --full-range 0.75 --threads 1 --device cpu --val-every 100 --ckpt-every 100 --no-progress"
nice -n 5 linblur train defocus --content mixed --config default --steps 1500 --lr 2e-3 --crop 64 --batch-size 8 --pool-size 768 --seed 0 --max-minutes 30 $C --out runs/dnf-1
leg_finished runs/dnf-1
nice -n 5 linblur train defocus --init runs/dnf-1/model.safetensors --content mixed --crop 96 --render-size 128 --batch-size 8 --pool-size 768 --lr 1e-3 --steps 1000 --seed 1 --max-minutes 36 $C --out runs/dnf-2
leg_finished runs/dnf-2
nice -n 5 linblur train defocus --init runs/dnf-2/model.safetensors --content mixed --crop 96 --render-size 128 --batch-size 8 --pool-size 512 --lr 5e-4 --steps 600 --seed 3 --max-minutes 16 --low-contrast 0.3 $C --out runs/dnf-3
leg_finished runs/dnf-3
nice -n 5 linblur train defocus --init runs/dnf-3/model.safetensors --content mixed --crop 96 --render-size 128 --batch-size 8 --pool-size 512 --lr 5e-4 --steps 700 --seed 4 --max-minutes 14 --low-contrast 0.3 $C --out runs/dnf-4
leg_finished runs/dnf-4
echo CHAIN DONE
