#!/usr/bin/env bash
# Submits the default PPO job to the cluster at $RAY_ADDRESS (default http://127.0.0.1:8265) and follows it.
# Extra arguments are config overrides, e.g. launch/submit_ppo.sh trainer.total_steps=50
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/rlhf-ray submit configs/ppo_arithmetic.yaml "$@" --follow
