#!/usr/bin/env bash
# Starts a single-node Ray head for trying job submission, every server bound to 127.0.0.1, with token
# authentication on (docs/security.md).
# Usage: launch/start_local_head.sh [NUM_CPUS] [NUM_GPUS]; then `rlhf-ray submit ...`; stop with launch/stop_local_head.sh
# Ports: GCS_PORT (default 6379), DASHBOARD_PORT (default 8265).
set -euo pipefail
cd "$(dirname "$0")/.."
RAY=${RAY:-.venv/bin/ray}
# Ray swaps 127.0.0.1 for the machine's routable address unless this is off (see rlhf_ray/trainers/session.py).
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
# Ray 2.60's `ray start` turns token auth on only where a token already exists: ask for it, and make the
# token (~/.ray/auth_token, unless RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH names one) if there is none.
# `rlhf-ray submit` and `rlhf-ray jobs` on this machine then send the same token.
export RAY_AUTH_MODE=token
"$RAY" get-auth-token --generate >/dev/null
# Ray writes the token file readable by every user of the machine; the token is the cluster's only lock.
if [ -f "$HOME/.ray/auth_token" ]; then chmod 600 "$HOME/.ray/auth_token"; fi
# --block in its own session: launch/stop_local_head.sh stops this head, and only it, by its process
# group (`ray stop` would stop every Ray of this user on the machine).
mkdir -p runs
setsid nohup "$RAY" start --head --block --node-ip-address=127.0.0.1 --port="${GCS_PORT:-6379}" \
  --dashboard-host=127.0.0.1 --dashboard-port="${DASHBOARD_PORT:-8265}" --num-cpus="${1:-$(nproc)}" \
  --num-gpus="${2:-0}" --disable-usage-stats >runs/ray_head.log 2>&1 &
echo $! >runs/ray_head.pid
for _ in $(seq 120); do
  if .venv/bin/python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:${DASHBOARD_PORT:-8265}/api/authentication_mode', timeout=2)" 2>/dev/null; then break; fi
  if ! kill -0 "$(cat runs/ray_head.pid)" 2>/dev/null; then echo "the head exited: runs/ray_head.log" >&2; exit 1; fi
  sleep 1
done
echo "dashboard: http://127.0.0.1:${DASHBOARD_PORT:-8265} (it asks for the token: $RAY get-auth-token)"
echo "submit: .venv/bin/rlhf-ray submit configs/ppo_arithmetic.yaml --address http://127.0.0.1:${DASHBOARD_PORT:-8265} --follow"
