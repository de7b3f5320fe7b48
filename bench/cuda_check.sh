#!/usr/bin/env bash
# The CUDA path in a few minutes on one GPU: the tests marked `gpu` (generation, a LoRA
# run, a GPTQ run, a distillation run, Wanda calibration, each against the CPU), then
# one LoRA fine-tuning step on SmolLM2-135M with its speed on cuda and on the CPU.
#
#   bash bench/cuda_check.sh            # from the repository root, in the project's venv
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONPATH=${PYTHONPATH:-$PWD/src}
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else \
    'no CUDA GPU visible to PyTorch: nothing to check')"
"$PY" -c "import torch; print('GPU:', torch.cuda.get_device_name(0), '| torch', torch.__version__)"
"$PY" -m pytest -q -m gpu tests/gpu
out=$(mktemp -d)
for dev in cuda cpu; do
  /usr/bin/time -f "$dev: %e s wall" "$PY" -m slmkit finetune smollm2-135m --data python-docs \
    --max-tokens 16384 --seq-len 512 --batch-size 4 --no-compile --patience 0 \
    --device "$dev" --out "$out/ft-$dev" --json \
    | "$PY" -c "import json,sys; r=json.load(sys.stdin); print('$dev', 'steps', r['steps'], \
      'tok/s', round(r['tokens_per_s']), 'val ppl', r['val_ppl_before'], '->', r['val_ppl_after'])"
done
rm -rf "$out"
