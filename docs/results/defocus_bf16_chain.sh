#!/bin/bash
# The first four legs of the shipped recipe (defocus_photons_chain.sh runs them, then a fifth): the four legs of docs/results/defocus_noise_chain.sh trained in bf16 autocast, with the steps of
# every leg scaled by 4/3 so the chain fills the same hour that the fp32 chain nearly fills (bf16 steps take ~0.79x
# as long here, data included). docs/results/defocus.md, "More steps in bf16".
# Usage: bash docs/results/defocus_bf16_chain.sh OUT_PREFIX [extra training options, e.g. --ema 0.999 or --channels-last]
# Environment: THREADS (default 1), STEPS (the four legs' steps, default "2000 1330 800 930"), as in
#   THREADS=2 STEPS="3200 2130 1280 1490" bash docs/results/defocus_bf16_chain.sh runs/dn2t   # both cores, one job
# and MINUTES (the legs' --max-minutes safety caps, default "18 22 13 15"). In the shipped two-thread run legs 3 and
# 4 ended 17 s and 8 s inside the default caps; on a slower machine raise them (e.g. MINUTES="20 26 17 19") so the
# caps do not end a leg before its learning-rate schedule does.
set -e
cd "$(dirname "$0")/../.."
source .venv/bin/activate
source docs/results/leg_finished.sh
P=${1:?usage: defocus_bf16_chain.sh OUT_PREFIX [options]}
shift
read -r S1 S2 S3 S4 <<< "${STEPS:-2000 1330 800 930}"
read -r M1 M2 M3 M4 <<< "${MINUTES:-18 22 13 15}"
C="--noise-input map --full-range 0.75 --amp bf16 --threads ${THREADS:-1} --device cpu --val-every 100 --ckpt-every 100 --no-progress $*"
nice -n 5 linblur train defocus --content mixed --config default --steps $S1 --lr 2e-3 --crop 64 --batch-size 8 --pool-size 768 --seed 0 --max-minutes $M1 $C --out "$P-1"
leg_finished "$P-1"
nice -n 5 linblur train defocus --init "$P-1/model.safetensors" --content mixed --crop 96 --render-size 128 --batch-size 8 --pool-size 768 --lr 1e-3 --steps $S2 --seed 1 --max-minutes $M2 $C --out "$P-2"
leg_finished "$P-2"
nice -n 5 linblur train defocus --init "$P-2/model.safetensors" --content mixed --crop 96 --render-size 128 --batch-size 8 --pool-size 512 --lr 5e-4 --steps $S3 --seed 3 --max-minutes $M3 --low-contrast 0.3 $C --out "$P-3"
leg_finished "$P-3"
nice -n 5 linblur train defocus --init "$P-3/model.safetensors" --content mixed --crop 96 --render-size 128 --batch-size 8 --pool-size 512 --lr 5e-4 --steps $S4 --seed 4 --max-minutes $M4 --low-contrast 0.3 $C --out "$P-4"
leg_finished "$P-4"
echo CHAIN DONE
