#!/bin/bash
# The shipped defocus-default: the two-thread bf16 chain (docs/results/defocus_bf16_chain.sh, four legs on training
# images of 100-4000 peak photo-electrons), then one leg of the last leg's recipe on 100-50000 photo-electrons with
# more faint textures (--low-contrast 0.5) at half its learning rate. docs/results/defocus.md, "Brightness (photons
# per pixel)".
# Usage: bash docs/results/defocus_photons_chain.sh OUT_PREFIX
# Training time, two threads: 44 min on session 12's machine (2026-11-23), 79 min (979 + 1231 + 795 + 885 + 878 s)
# on session 13's AMD EPYC (Zen 4, AVX512). Run twice on one machine the result is bit-identical; the shipped
# weights (leg 5 trained on session 12's 1.7x faster machine) differ from a re-run on session 13's, most likely
# because bf16 kernels round differently on another processor, and measure the same to 0.001 px
# (docs/results/defocus.md, "Reproducing the shipped model from nothing").
set -e
cd "$(dirname "$0")/../.."
P=${1:?usage: defocus_photons_chain.sh OUT_PREFIX}
# The --max-minutes caps are safety stops only; they must not end a leg before its learning-rate schedule does. On
# 2026-11-23 (session 13) this machine needed 979, 1231, 795 and 885 s for the four legs: leg 3 would have hit the
# bf16 chain's default 13-min cap, so the caps here are generous (MINUTES overrides them).
THREADS=2 STEPS="3200 2130 1280 1490" MINUTES="${MINUTES:-24 30 20 22}" bash docs/results/defocus_bf16_chain.sh "$P"
source .venv/bin/activate
source docs/results/leg_finished.sh
nice -n 5 linblur train defocus --init "$P-4/model.safetensors" --content mixed --crop 96 --render-size 128 \
    --batch-size 8 --pool-size 512 --steps 1490 --low-contrast 0.5 --noise-input map --full-range 0.75 --amp bf16 \
    --threads 2 --device cpu --val-every 100 --ckpt-every 100 --no-progress --max-minutes 25 --photons 100 50000 \
    --lr 2.5e-4 --seed 8 --out "$P-5"
leg_finished "$P-5"
echo CHAIN DONE
