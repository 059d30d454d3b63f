#!/usr/bin/env bash
# GPU check (issue 16): rollout vs teacher forcing on an SD-1.5-sized UNet, 64×64 latents, batch 16, bf16,
# batched vs one sample at a time, torch.compile off and on. Writes bench/results/gpu_check.{md,json}.
# Under 8 minutes on one GPU (hard limit below); `bench/gpu_check.sh --smoke` runs a tiny version on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
exec timeout 480 "$PY" -m bench.gpu_check "$@"
