#!/usr/bin/env bash
# Set up compress in ./.venv on a fresh machine: idempotent, safe to run before every command.
#
# torch is installed first and pinned, so that every other dependency resolves against that build instead of
# pulling a newer torch with several GB of CUDA packages. Override with TORCH_SPEC (e.g. "torch==2.13.0+cu126"
# plus PIP_EXTRA_INDEX_URL) on a GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
EXTRAS=${EXTRAS:-test,postgres}
VENV=.venv
STAMP=$VENV/.compress-setup

want="$TORCH_SPEC|$EXTRAS|$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$VENV/bin/compress" ]; then
    exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV with $($PYTHON --version)" >&2
    "$PYTHON" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip --disable-pip-version-check"
echo "setup: installing $TORCH_SPEC" >&2
$PIP install -q "$TORCH_SPEC"
echo "setup: installing compress[$EXTRAS] and its dependencies" >&2
$PIP install -q -e ".[$EXTRAS]"
echo "$want" > "$STAMP"
echo "setup: done ($VENV)" >&2
