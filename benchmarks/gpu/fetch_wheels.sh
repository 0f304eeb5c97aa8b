#!/usr/bin/env bash
# Download, on a machine with network, the wheels that benchmarks/gpu/run.sh installs on a GPU
# machine without network: the packages this project needs that its CUDA image (Python 3.12,
# torch with CUDA, numpy, scipy, scikit-learn, matplotlib, typer, PyYAML) lacks. Pins match
# pyproject.toml; scs (43 MB) is left out: cvxpy imports without it, and the KKT programs use
# HiGHS, Clarabel or scipy. Usage: bash benchmarks/gpu/fetch_wheels.sh [DIR, default .whl]
set -euo pipefail
cd "$(dirname "$0")/../.."
DIR=${1:-.whl}
mkdir -p "$DIR"
PLAT=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 any; do
  PLAT+=(--platform "$p")
done
for pkg in pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.7.0 typing-inspection==0.4.5 typing-extensions==4.16.0 \
           mlxtend==0.25.0 cvxpy==1.9.3 clarabel==0.11.1 osqp==1.1.3 highspy==1.16.0 qdldl==0.1.9.post1 \
           sparsediffpy==0.6.1 cffi==2.0.0 pycparser==3.0; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLAT[@]}" -d "$DIR" "$pkg"
done
du -sh "$DIR"
