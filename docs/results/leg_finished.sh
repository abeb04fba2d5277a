# Sourced by the training-chain scripts of docs/results/: `leg_finished RUN` stops a chain (non-zero exit, under set -e) when the leg in
# RUN ended before its learning-rate schedule did. `linblur train` exits 0 when its --max-minutes cap ends a run
# (the budget is the user's); only the card's training.finished says so, and a chain that went on from such a leg
# would train another model than the recipe's.
leg_finished() {
    python - "$1" <<'PY'
import json, sys
run = sys.argv[1]
t = json.load(open(f"{run}/model.json"))["training"]
if not t["finished"]:
    sys.exit(f"{run} stopped at step {t['steps']} of {t['steps_planned']} (its --max-minutes cap on this machine): "
             "raise the cap (MINUTES=...) or continue the leg with its command and --resume, then run the rest")
PY
}
