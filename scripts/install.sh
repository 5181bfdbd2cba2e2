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
  # llama-cpp-python (requirements-test.txt) compiles llama.cpp: without -march=native, with only
  # the vector instructions this CPU has (one it lacks is a SIGILL at the first token), and no
  # AVX-512, so the wheel pip caches runs on every machine of this kind. A CMAKE_ARGS of your own wins.
  if [ -z "${CMAKE_ARGS:-}" ]; then
    has() { grep -qw "$1" /proc/cpuinfo && echo ON || echo OFF; }
    export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=$(has avx) -DGGML_AVX2=$(has avx2) -DGGML_FMA=$(has fma) \
-DGGML_F16C=$(has f16c) -DGGML_AVX512=OFF -DGGML_AVX_VNNI=OFF -DLLAVA_BUILD=OFF"
  fi
  python -c "import llama_cpp" 2>/dev/null \
    || echo "install.sh: installing llama-cpp-python; with no wheel in pip's cache it compiles (6-10 minutes on 2 cores)"
  pip_install -r requirements-test.txt
  if ! command -v chromium >/dev/null; then
    SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
  fi
fi
