#!/usr/bin/env bash
# Install a working OpenMMLab stack (mmengine, mmsegmentation, mmdet and a FULL mmcv 2.1.0 with compiled ops)
# into the virtual environment given as the only argument.
#
# Why a script: PyPI has no mmcv wheel for torch 2.14, and mmcv-lite is not enough (mmseg.models / mmdet.models
# import mmcv._ext). mmcv 2.1.0 is therefore built from its source distribution, with torch visible to setup.py
# (no build isolation, else it silently builds without ops) and -std=c++20 (torch 2.14's headers need it).
# The build takes ~14 min on 2 cores; the wheel is cached outside the repo so a second set-up takes seconds.
#
# Usage: bash tools/install_mm.sh VENV_DIR      (idempotent: does nothing if mmcv.ops already imports)
set -euo pipefail

VENV=${1:?usage: tools/install_mm.sh VENV_DIR}
[ -x "$VENV/bin/python" ] || { echo "install_mm: no python at $VENV/bin/python" >&2; exit 1; }
VENV=$(cd "$VENV" && pwd)  # absolute: the build runs in another directory
PY="$VENV/bin/python"
PIP=("$PY" -m pip)

MMCV_VERSION=2.1.0
CACHE=${SUPERNET_ZOO_CACHE:-$HOME/.cache/supernet-zoo}
WHEELS="$CACHE/wheels"
mkdir -p "$WHEELS"

# setuptools<81 stays: mmcv's setup.py and mmengine's is_installed() (used to resolve 'mmseg::' / 'mmdet::' base
# configs) import pkg_resources, which setuptools 81 removed. mmseg imports ftfy and regex without declaring them.
PKGS=(mmengine==0.10.7 mmsegmentation==1.2.2 mmdet==3.3.0 'ftfy>=6.1' 'regex>=2023.0' 'setuptools<81')

check() {
    "$PY" -c 'import mmcv, mmcv.ops, mmseg.models, mmdet.models' >/dev/null 2>&1
}

if check; then
    echo "install_mm: OpenMMLab stack with mmcv ops already works in $VENV, nothing to do"
    exit 0
fi

echo "install_mm: installing mmengine, mmsegmentation, mmdet, ftfy, regex into $VENV"
"${PIP[@]}" install --quiet "${PKGS[@]}"

if "$PY" -c 'import mmcv, mmcv.ops' >/dev/null 2>&1; then
    echo "install_mm: mmcv with ops already installed"
else
    # The cached wheel is only valid for the same Python, torch and device kind: the wheel tag names the Python,
    # the folder the torch version and whether CUDA ops were compiled (mmcv builds them when CUDA is usable).
    TORCH_TAG=$("$PY" -c 'import os, torch
cuda = torch.version.cuda and (torch.cuda.is_available() or os.environ.get("FORCE_CUDA") == "1")
print(torch.__version__.split("+")[0] + ("-cu" + torch.version.cuda.replace(".", "") if cuda else "-cpu"))')
    PYTAG=$("$PY" -c 'import sys; print(f"cp{sys.version_info.major}{sys.version_info.minor}")')
    WHEEL_DIR="$WHEELS/torch-$TORCH_TAG"
    mkdir -p "$WHEEL_DIR"
    WHEEL=$(ls "$WHEEL_DIR"/mmcv-"$MMCV_VERSION"-"$PYTAG"-*.whl 2>/dev/null | head -n 1 || true)
    if [ -z "$WHEEL" ]; then
        echo "install_mm: building mmcv $MMCV_VERSION from source, ~14 min on 2 cores, cached at $WHEEL_DIR"
        # ninja makes MAX_JOBS effective (without it the ops compile one file at a time).
        "${PIP[@]}" install --quiet ninja wheel 'setuptools<81'
        BUILD=$(mktemp -d "${TMPDIR:-/tmp}/mmcv-build.XXXXXX")
        trap 'rm -rf "$BUILD"' EXIT
        # --no-build-isolation here too: pip prepares the sdist's metadata while downloading, and in an isolated
        # build environment it would take the newest setuptools, which has no pkg_resources (mmcv's setup.py
        # imports it). The venv's setuptools<81 and torch are used instead.
        "${PIP[@]}" download --quiet --no-deps --no-binary :all: --no-build-isolation "mmcv==$MMCV_VERSION" -d "$BUILD"
        tar -xzf "$BUILD/mmcv-$MMCV_VERSION.tar.gz" -C "$BUILD"
        SRC="$BUILD/mmcv-$MMCV_VERSION"
        sed -i 's/-std=c++17/-std=c++20/g' "$SRC/setup.py"
        start=$(date +%s)
        (cd "$SRC" && PATH="$VENV/bin:$PATH" MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-2} \
            "$PY" -m pip wheel --no-build-isolation --no-deps -w "$WHEEL_DIR" .)
        echo "install_mm: mmcv build took $(( ($(date +%s) - start) / 60 )) min"
        WHEEL=$(ls "$WHEEL_DIR"/mmcv-"$MMCV_VERSION"-"$PYTAG"-*.whl | head -n 1)
    else
        echo "install_mm: using cached mmcv wheel $WHEEL"
    fi
    "${PIP[@]}" install --quiet "$WHEEL"
fi

if check; then
    echo "install_mm: OK: mmcv.ops, mmseg.models and mmdet.models import in $VENV"
else
    echo "install_mm: FAILED: the check below does not pass" >&2
    "$PY" -c 'import mmcv, mmcv.ops, mmseg.models, mmdet.models'
    exit 1
fi
