#!/usr/bin/env bash
# Fill .whl/ for benchmarks/gpu_check.sh, on a machine that reaches PyPI:
#   bash benchmarks/gpu_wheels.sh [PYTHON_VERSION]     # default 3.11 (the GPU image's Python)
# Downloads the wheels (no dependencies resolved: gpu_check.sh installs only what the image
# lacks) for manylinux x86_64, and copies SmolLM2-135M-Instruct's tokenizer and config (no
# weights) from the local model cache, which random-weight students use as their tokenizer.
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER=${1:-3.11}
PIP=${PIP:-python3 -m pip}
mkdir -p .whl
# shellcheck disable=SC2086
$PIP download --no-deps --only-binary=:all: --implementation cp --python-version "$PYVER" \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    bitsandbytes==0.50.2 peft==0.21.2 accelerate==1.15.0 transformers==5.24.0 tokenizers==0.23.3 \
    safetensors==0.8.0 huggingface_hub==2.4.0 pydantic==2.14.4 pydantic_core==2.50.5 \
    typing_inspection annotated_types pyyaml==6.0.4 soundfile==0.14.0 tqdm==4.70.1
SRC=$(python3 -c "from distill.local_models import smollm2_instruct; print(smollm2_instruct())")
DST=.whl/models/$(basename "$SRC")
mkdir -p "$DST"
for file in config.json generation_config.json tokenizer.json tokenizer_config.json \
            special_tokens_map.json chat_template.jinja; do
    [[ -f $SRC/$file ]] && cp "$SRC/$file" "$DST/"
done
du -sh .whl/* | sort -h
