#!/usr/bin/env bash
# Stops the Ray head started by launch/start_local_head.sh, and nothing else: its `ray start --block`
# process group, by the id it recorded (never `ray stop --force`, which stops every Ray of this user).
set -euo pipefail
cd "$(dirname "$0")/.."
pid=$(cat runs/ray_head.pid 2>/dev/null) || { echo "no runs/ray_head.pid: no head started by launch/start_local_head.sh" >&2; exit 1; }
kill -TERM -- "-$pid" 2>/dev/null || { echo "head $pid is not running"; rm -f runs/ray_head.pid; exit 0; }
for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
rm -f runs/ray_head.pid
echo "stopped the head (process group $pid)"
