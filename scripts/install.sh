#!/usr/bin/env bash
# Installs what phi3ui needs into the current Python (3.11): `bash scripts/install.sh`.
# `--test` adds the test tools and Debian's Chromium for the browser tests.
set -euo pipefail
cd "$(dirname "$0")/.."
pip_install() { python -m pip install --disable-pip-version-check -q "$@"; }

pip_install -r requirements.txt
pip_install --no-deps -r requirements-nodeps.txt
# optimum-intel declares torchvision, but the build pip finds is not made for the CPU torch
# and breaks `import transformers` ("operator torchvision::nms does not exist"); nothing here needs it.
python -m pip uninstall -y -q torchvision 2>/dev/null || true
python -c "import transformers, optimum.intel, openvino_genai, gradio" \
  || { echo "install.sh: the stack does not import; see the errors above" >&2; exit 1; }

if [ "${1:-}" = "--test" ]; then
  pip_install -r requirements-test.txt
  if ! command -v chromium >/dev/null; then
    SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
  fi
fi
