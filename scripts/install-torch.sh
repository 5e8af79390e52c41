#!/usr/bin/env bash
# Installs the PyTorch CUDA wheel the real-PyTorch tests, `cudalloc replay --reference
# pytorch` and the `vs_pytorch` benchmark use, into .venv at the repository root (about
# 50 s and 5.3 GB), with the CUDA runtime headers' crt/ folder (nvidia-cuda-crt, at the
# runtime's version) that the benchmark's C++ harness needs to include torch's c10/cuda
# headers. It runs on a machine with no GPU over the stand-in CUDA (ffi/standin).
# Afterwards: export CUDALLOC_PYTHON=$PWD/.venv/bin/python (the tests find .venv themselves).
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSION=${TORCH_VERSION:-2.15.0}
if [ -x .venv/bin/python ] && .venv/bin/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null \
    && .venv/bin/pip show -q nvidia-cuda-crt >/dev/null 2>&1; then
    echo "torch $TORCH_VERSION is already in .venv"
    exit 0
fi
python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check "torch==$TORCH_VERSION"
runtime=$(.venv/bin/pip show nvidia-cuda-runtime | awk '/^Version:/ {print $2}')
.venv/bin/pip install --quiet --disable-pip-version-check "nvidia-cuda-crt==$runtime"
.venv/bin/python -c "import torch; print('installed torch', torch.__version__, 'CUDA', torch.version.cuda)"
