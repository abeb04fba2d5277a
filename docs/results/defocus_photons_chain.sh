#!/bin/bash
# The shipped defocus-default: the two-thread bf16 chain (docs/results/defocus_bf16_chain.sh, four legs on training
# images of 100-4000 peak photo-electrons), then one leg of the last leg's recipe on 100-50000 photo-electrons with
# more faint textures (--low-contrast 0.5) at half its learning rate. docs/results/defocus.md, "Brightness (photons
# per pixel)".
# Usage: bash docs/results/defocus_photons_chain.sh OUT_PREFIX     (about 44 min of training here, two threads)
set -e
cd "$(dirname "$0")/../.."
P=${1:?usage: defocus_photons_chain.sh OUT_PREFIX}
THREADS=2 STEPS="3200 2130 1280 1490" bash docs/results/defocus_bf16_chain.sh "$P"
source .venv/bin/activate
nice -n 5 linblur train defocus --init "$P-4/model.safetensors" --content mixed --crop 96 --render-size 128 \
    --batch-size 8 --pool-size 512 --steps 1490 --low-contrast 0.5 --noise-input map --full-range 0.75 --amp bf16 \
    --threads 2 --device cpu --val-every 100 --ckpt-every 100 --no-progress --max-minutes 20 --photons 100 50000 \
    --lr 2.5e-4 --seed 8 --out "$P-5"
echo CHAIN DONE
