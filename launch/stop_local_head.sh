#!/usr/bin/env bash
# Stops the Ray head started by launch/start_local_head.sh (and every Ray process of this user).
set -euo pipefail
cd "$(dirname "$0")/.."
"${RAY:-.venv/bin/ray}" stop --force
