#!/usr/bin/env bash
# The GPU figures of the docs' benchmarks, in one go (about 6 minutes on one H200), from the repository
# root of a machine with a CUDA GPU and the Fashion-MNIST files (make system-deps, or
# AUTOPRUNE_DATA_DIR pointing at them):
#
#   bash benchmarks/gpu.sh [PYTHON]        # PYTHON defaults to .venv/bin/python
#
# 1. the CUDA tests (tests/test_hardware.py -k cuda);
# 2. benchmarks/pruned_training_speed.py on the GPU (bf16 autocast) at batch 128, as on the
#    CPU, at 1024 and at 4096, and torch.compile at batch 128;
# 3. benchmarks/search_throughput.py --device cuda: 1, 2, 4 and 8 trainings sharing the GPU.
# Each step runs even if one before it failed; the exit code says whether all passed.
set -uo pipefail
PY=${1:-.venv/bin/python}
R=benchmarks/results
status=0
step() { echo "== $*"; "$@" || { echo "== failed ($?): $*"; status=1; }; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
step "$PY" -m pytest -q -p no:cacheprovider tests/test_hardware.py -k cuda
step "$PY" benchmarks/pruned_training_speed.py --device cuda --batch 128 --steps 30 \
    --formats channels_last contiguous --results $R/pruned_training_speed_cuda_b128.md
step "$PY" benchmarks/pruned_training_speed.py --device cuda --batch 1024 --steps 30 \
    --subset 20000 --formats channels_last contiguous \
    --results $R/pruned_training_speed_cuda_b1024.md
step "$PY" benchmarks/pruned_training_speed.py --device cuda --batch 4096 --steps 20 \
    --subset 20000 --formats contiguous channels_last \
    --results $R/pruned_training_speed_cuda_b4096.md
step "$PY" benchmarks/pruned_training_speed.py --device cuda --batch 128 --steps 30 \
    --models cifar_resnet20 --formats contiguous channels_last --compile --epochs 2 \
    --results $R/pruned_training_speed_cuda_b128_compile.md
step "$PY" benchmarks/search_throughput.py --device cuda --gpu-share 1 2 4 8
exit $status
