set -e
cd "$(dirname "$0")/../../.."
source .venv/bin/activate
mkdir -p runs/s19
# the deblur-default these legs continued (sha256 396a49b4...), from git history: the name now means their result
git show 9014f90:src/napari_linblur/models/weights/deblur-default.safetensors > runs/s19/deblur-396a49b4.safetensors
nice -n 5 linblur train deblur --stage 1 --init runs/s19/deblur-396a49b4.safetensors --loss psnr --pool 256 --patch 96 --batch 4 --depth-band 0.5 2.5 0.6 --out runs/s19/db_s1 --steps 3000 --lr 2e-4 --seed 21 --amp bf16 --threads 1 --max-minutes 10 --val-every 1000 --ckpt-every 1000 --no-progress
nice -n 5 linblur train deblur --stage 2 --init runs/s19/db_s1/model.safetensors --loss psnr --replay 0.8 --patch 96 --batch 4 --feature-weight 5 --depth-band 0.5 2.5 0.6 --out runs/s19/db_s2 --steps 1000 --lr 1e-4 --seed 22 --amp bf16 --threads 1 --max-minutes 5 --val-every 500 --ckpt-every 500 --no-progress
nice -n 5 linblur evaluate deblur --model runs/s19/db_s2/model.safetensors --ablation shipped=runs/s19/deblur-396a49b4.safetensors --n 128 --side 128 --seed 3000000 --no-speed --no-reblur --threads 1 --out runs/s19/val_band
echo DONE
