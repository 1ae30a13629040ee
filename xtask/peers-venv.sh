#!/usr/bin/env bash
# Makes WORKSPACE/.venv with PyTorch, the python `cargo xtask bench` runs its torch peer
# with (xtask/src/torch.rs: FASTATTN_PYTHON, else .venv/bin/python, else python3).
# A large download (torch and its dependencies, several GB from PyPI) and minutes of CPU:
# for a developer's machine, never for CI (the bench and its tests skip torch without it).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install torch numpy
.venv/bin/python -c 'import torch; print("torch", torch.__version__, "in", __import__("sys").prefix)'
