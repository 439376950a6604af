#!/usr/bin/env bash
# cibuildwheel before-all for manylinux_2_28 x86_64 (AlmaLinux 8): NVIDIA's nvcc and the static
# CUDA runtime, so release wheels carry the CUDA kernels. 12.8 is the first toolkit that
# compiles sm_100, which the default arch list (80;90;100) includes.
set -euo pipefail
dnf install -y dnf-plugins-core
dnf config-manager --add-repo https://developer.download.nvidia.com/compute/cuda/repos/rhel8/x86_64/cuda-rhel8.repo
dnf install -y cuda-nvcc-12-8 cuda-cudart-devel-12-8
ln -sfn /usr/local/cuda-12.8 /usr/local/cuda
/usr/local/cuda/bin/nvcc --version
