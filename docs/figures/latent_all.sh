#!/usr/bin/env bash
# The three figures of docs/results/latent-ae.md from nothing, on its synthetic dataset: blur synthesis and
# deblurring with the shipped ae-default (latent_synthesis.png, latent_deblur.png), and the latent PCA of
# ae-default next to four short comparison runs (the regularizations of paper 000 and the paper's network,
# latent_pca.png).
#
#   bash docs/figures/latent_all.sh [WORK]     # WORK: a scratch folder (default /tmp/latent_figures); ~4 min on 2 cores
#
# Every run has a fixed step count (no --max-minutes cap), so the figure depends on the command and seed only.
set -euo pipefail
WORK=${1:-/tmp/latent_figures}
BIN=${BIN:-.venv/bin}
mkdir -p "$WORK"
DATA=$WORK/synth50.zarr
[ -d "$DATA" ] || "$BIN/linblur" synth "$DATA" --fields 50 --seed 0 --planes even --psf-focus legacy --no-progress
common=(--data "$DATA" --channel w1 --seed 0 --device cpu --threads 2 --no-progress)
short=(--steps 300 --batch-size 4 --crop 64)
train() {  # OUT, options...: skipped when OUT already holds its model (re-running the script resumes the figure)
    local out=$1; shift
    [ -f "$out/model.safetensors" ] || "$BIN/linblur" train ae "${common[@]}" "$@" --out "$out"
}
train "$WORK/baseline" "${short[@]}" --reg baseline
train "$WORK/indirect" "${short[@]}" --reg indirect
train "$WORK/direct_relative" "${short[@]}" --reg direct --direct-scale relative
train "$WORK/paper_direct" --config paper --reg direct --direct-scale absolute --steps 60 --batch-size 4 --crop 128
"$BIN/python" docs/figures/latent_figures.py --data "$DATA" --figures synthesis deblur --out docs/images \
    --model ae-default=ae-default
"$BIN/python" docs/figures/latent_figures.py --data "$DATA" --figures pca --out docs/images \
    --model ae-default=ae-default --model baseline="$WORK/baseline/model.safetensors" \
    --model indirect="$WORK/indirect/model.safetensors" \
    --model "direct (relative)=$WORK/direct_relative/model.safetensors" \
    --model "paper config, direct=$WORK/paper_direct/model.safetensors"
