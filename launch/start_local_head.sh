#!/usr/bin/env bash
# Starts a single-node Ray head for trying job submission, every server bound to 127.0.0.1.
# Usage: launch/start_local_head.sh [NUM_CPUS] [NUM_GPUS]; then `rlhf-ray submit ...`; stop with launch/stop_local_head.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RAY=${RAY:-.venv/bin/ray}
# Ray swaps 127.0.0.1 for the machine's routable address unless this is off (see rlhf_ray/trainers/session.py).
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
"$RAY" start --head --node-ip-address=127.0.0.1 --dashboard-host=127.0.0.1 --dashboard-port=${DASHBOARD_PORT:-8265} \
  --num-cpus="${1:-$(nproc)}" --num-gpus="${2:-0}" --disable-usage-stats
echo "dashboard: http://127.0.0.1:${DASHBOARD_PORT:-8265}   submit: .venv/bin/rlhf-ray submit configs/ppo_arithmetic.yaml --follow"
