#!/usr/bin/env bash
# The calculator-tool recipe of docs/environments.md, end to end on this machine (local Ray, CPU):
#   1. SFT traces written in code for 256 training questions (never the held-out ones),
#   2. a short SFT warm-up (SmolLM2 alone never calls the tool),
#   3. GRPO with the calculator environment; held-out greedy evaluation at steps 0, 5 and 10.
# Usage: bash scripts/calculator_demo.sh [extra key=value overrides for the GRPO run]
set -euo pipefail
cd "$(dirname "$0")/.."
RLHF=${RLHF:-.venv/bin/rlhf-ray}
start=$(date +%s)
$RLHF make-traces configs/grpo_calculator.yaml --out runs/calculator_traces.jsonl --n 256
$RLHF train configs/sft_calculator_warmup.yaml trainer.overwrite=true
$RLHF train configs/grpo_calculator.yaml model.path=runs/sft_calculator/final trainer.overwrite=true "$@"
echo "calculator demo: $(( ($(date +%s) - start) / 60 )) minutes; curve: .venv/bin/rlhf-ray report runs/grpo_calculator"
