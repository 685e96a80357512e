#!/bin/sh
# The wheels benchmarks/gpu_check.py installs on a GPU machine that has no network: diffusers, which such a machine
# (PyTorch, transformers, onnxruntime) lacks, and the small pure-Python packages that the torch backend, its tests
# and diffusers import, in case one is missing there. gpu_check.py installs only those the machine lacks, the newest
# of each; the older diffusers is its fallback for a huggingface_hub older than 1.32 (or safetensors older than 0.8).
# Pure-Python wheels only (py3-none-any), so they install on any CPython 3.11+ and any processor; Pillow, NumPy,
# safetensors and tokenizers come with PyTorch and transformers there. Pins: the versions the tests ran with, where
# the index has them.
#
#     benchmarks/gpu_wheels.sh        (needs network; writes .gpu-wheels/ at the repository root, git-ignored)
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/.gpu-wheels"
python=${PYTHON:-python3}
rm -rf "$dest"
mkdir -p "$dest"
set -- \
    diffusers==0.42.1 diffusers==0.36.0 \
    requests==2.34.2 charset-normalizer==3.5.3 idna==3.20 urllib3==2.8.0 certifi==2026.10.19.post1 \
    httpx==0.28.1 httpcore==1.0.9 h11==0.16.0 anyio==4.16.0 sniffio==1.3.1 \
    filelock==4.3.1 tqdm==4.70.1 \
    pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 pygments==2.21.0 packaging==26.4 \
    "hypothesis>=6.100,<7" sortedcontainers==2.4.0
for requirement in "$@"; do
    "$python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        --platform any --implementation py --python-version 3.11 --abi none --dest "$dest" "$requirement"
done
ls "$dest"
size=$(du -sk "$dest" | cut -f1)
echo "$(ls "$dest" | wc -l) wheels, $((size / 1024)) MiB in $dest"
if [ "$size" -gt 32768 ]; then
    echo "more than 32 MiB of wheels: the working tree that travels to the GPU machine must stay well under 64 MiB" >&2
    exit 1
fi
