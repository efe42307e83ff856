#!/usr/bin/env bash
# Create (or reuse) the toolkit's virtual environment and print its path on stdout.
#
# The venv lives outside the clone, keyed by a hash of the dependency tables of pyproject.toml
# (plus the extras asked for), so a rerun or a second clone reuses it and a dependency change
# builds a new one. The project itself is installed editable, re-pointed when the clone moves.
# Everything but the final path goes to stderr.
set -euo pipefail

extras="${DISTILL_EXTRAS:-dev,deepspeed}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
home="${DISTILL_VENV_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/distill/venvs}"

key=$("$python" - "$root/pyproject.toml" "$extras" <<'PY'
import hashlib, json, sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
no_deps = tomllib.load(open(sys.argv[1], "rb"))["tool"]["distill"]["venv"]["no-deps"]
wanted = {"python": sys.version_info[:2], "deps": project["dependencies"], "extras": sys.argv[2],
          "optional": project.get("optional-dependencies", {}), "no-deps": no_deps}
print(hashlib.sha256(json.dumps(wanted, sort_keys=True).encode()).hexdigest()[:16])
PY
)
venv="$home/toolkit-$key"
mkdir -p "$home"
# Several processes (test workers, make targets) may ask at once: one builds, the others wait.
exec 9>"$venv.lock"
flock 9

if [ ! -f "$venv/.complete" ]; then
    echo "distill: building the toolkit venv in $venv (first time only; torch is large)" >&2
    # A venv without the marker is a build that was interrupted: start it again.
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip setuptools wheel >&2
    # Dependencies only: the project itself is installed editable below, per clone.
    deps=$("$python" - "$root/pyproject.toml" "$extras" <<'PY'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
deps = list(project["dependencies"])
for extra in filter(None, sys.argv[2].split(",")):
    deps += project["optional-dependencies"][extra]
print("\n".join(deps))
PY
)
    mapfile -t dep_list <<<"$deps"
    DS_BUILD_OPS=0 "$venv/bin/python" -m pip install -q "${dep_list[@]}" >&2
    no_deps=$("$python" -c 'import sys, tomllib; print(*tomllib.load(open(sys.argv[1], "rb"))["tool"]["distill"]["venv"]["no-deps"])' "$root/pyproject.toml")
    # shellcheck disable=SC2086
    [ -z "$no_deps" ] || "$venv/bin/python" -m pip install -q --no-deps $no_deps >&2
    touch "$venv/.complete"
fi

if [ "$(cat "$venv/.distill-src" 2>/dev/null)" != "$root" ]; then
    "$venv/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$root" >&2
    echo "$root" > "$venv/.distill-src"
fi
echo "$venv"
