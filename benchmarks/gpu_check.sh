#!/usr/bin/env bash
# One-shot GPU check for a machine with a GPU and no model hub (and maybe no PyPI):
#   bash benchmarks/gpu_check.sh            # tables in runs/gpu_check/ (summary.md gathers them)
#
# 1. Installs the Python packages the image lacks from wheels carried in the working tree, in
#    .whl/ (ignored by git; fill it with benchmarks/gpu_wheels.sh on a machine with PyPI).
#    Only missing modules are installed (pip --no-index --find-links .whl), torch/torchaudio are
#    expected in the image (a CUDA torch cannot be carried: about 900 MB). The wheels, for
#    CPython 3.11 on manylinux x86_64, as measured when this script was written:
#      bitsandbytes-0.50.2 (py3-none-manylinux_2_24)    43.1 MB
#      transformers-5.24.0 (py3-none-any)               13.5 MB
#      tokenizers-0.23.3 (cp310-abi3)                    3.4 MB
#      pydantic_core-2.50.5 (cp311)                      2.3 MB
#      soundfile-0.14.0 (py2.py3-none-manylinux_2_28)    1.3 MB
#      huggingface_hub-2.4.0                             0.9 MB
#      peft-0.21.2                                       0.8 MB
#      pyyaml-6.0.4 (cp311)                              0.8 MB
#      safetensors-0.8.0 (cp310-abi3)                    0.5 MB
#      pydantic-2.14.4                                   0.5 MB
#      accelerate-1.15.0                                 0.4 MB
#      tqdm-4.70.1, typing_inspection-0.4.5, annotated_types-0.8.0   0.1 MB
#      total 67.7 MB (64.6 MiB); carry only what the image lacks when a transfer limit applies
#    plus .whl/models/smollm2-135m-instruct-v2/ (3.5 MB: SmolLM2's tokenizer and config, no
#    weights), the tokenizer random-weight students use when the LLaMA one is not on disk.
# 2. Runs the reference comparison in one `distill bench` run (baseline: Whisper-large-v2 fp32
#    encoder + BEATs + LLaMA-3.2-3B bf16 LoRA; 3B QLoRA; 1B QLoRA; 2-of-8 MoE), random weights at
#    the real shapes, the full protocol (the recipes' 10 warm-up + 100 timed runs).
# 3. Measures the levers on the 1B student, one `distill bench` run each (inference only): the
#    recipe as is, Whisper in float32, eager / SDPA attention, a static KV cache, a static cache
#    with a compiled decode step.
# 4. Runs benchmarks/bench_losses.py on the device.
#
# Settings (environment): DEVICE (cuda), OUT (runs/gpu_check), PYTHON (python3), RECIPES (the
# comparison, first = baseline), LEVER_RECIPE, LEVER_NAMES (a subset of the levers below),
# BENCH_ARGS / LEVER_ARGS / LOSS_ARGS (extra
# arguments, e.g. fewer runs for a quick try). Exit status: 0 when every step ran, else the
# first failing step's.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-runs/gpu_check}
PYTHON=${PYTHON:-python3}
RECIPES=${RECIPES:-"recipes/shapes/baseline_3b.yaml recipes/shapes/qlora_3b.yaml recipes/shapes/qlora_1b.yaml recipes/shapes/moe_2of8.yaml"}
LEVER_RECIPE=${LEVER_RECIPE:-recipes/shapes/qlora_1b.yaml}
BENCH_ARGS=${BENCH_ARGS:-}
LEVER_ARGS=${LEVER_ARGS:-"--train-steps 0"}
LOSS_ARGS=${LOSS_ARGS:-}
WHEELS=$ROOT/.whl
mkdir -p "$OUT"
status=0
step() { echo "== $*" | tee -a "$OUT/steps.log"; }

# ------------------------------------------------------------------ 1. missing packages
# import name -> requirement (the versions measured on the CPU machine; any compatible wheel in
# .whl/ is taken)
PACKAGES="bitsandbytes:bitsandbytes peft:peft accelerate:accelerate transformers:transformers
tokenizers:tokenizers safetensors:safetensors huggingface_hub:huggingface_hub pydantic:pydantic
yaml:pyyaml soundfile:soundfile tqdm:tqdm"
missing=()
for pair in $PACKAGES; do
    "$PYTHON" -c "import ${pair%%:*}" 2>/dev/null || missing+=("${pair#*:}")
done
"$PYTHON" -c "import torch, torchaudio" 2>/dev/null || {
    echo "error: torch and torchaudio must be in the image (a CUDA build; too large to carry)" >&2
    exit 2
}
if ((${#missing[@]})); then
    step "installing from $WHEELS: ${missing[*]}"
    if ! "$PYTHON" -m pip install --no-index --find-links "$WHEELS" "${missing[@]}" >>"$OUT/steps.log" 2>&1; then
        echo "error: could not install ${missing[*]} from $WHEELS (run benchmarks/gpu_wheels.sh" \
             "where PyPI is reachable and carry .whl/); see $OUT/steps.log" >&2
        exit 2
    fi
fi
if [[ -d $WHEELS/models && -z ${DISTILL_MODEL_CACHE:-} ]]; then
    export DISTILL_MODEL_CACHE=$WHEELS/models  # SmolLM2's tokenizer for random-weight students
fi
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}

{
    echo "date: $(date -u '+%F %T UTC')"
    echo "uptime: $(uptime)"
    "$PYTHON" -c "import torch, transformers, bitsandbytes, peft; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| transformers', transformers.__version__, '| bitsandbytes', bitsandbytes.__version__, '| peft', peft.__version__); print('device:', torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
} >"$OUT/environment.txt" 2>&1

run() {  # run NAME COMMAND...: output to $OUT/NAME.md, errors to $OUT/NAME.log
    local name=$1
    shift
    step "$name: $*"
    local started=$SECONDS
    if "$@" >"$OUT/$name.md" 2>"$OUT/$name.log"; then
        echo "   done in $((SECONDS - started)) s" | tee -a "$OUT/steps.log"
    else
        local code=$?
        echo "   FAILED ($code) after $((SECONDS - started)) s: see $OUT/$name.log" | tee -a "$OUT/steps.log"
        ((status == 0)) && status=$code
    fi
}

# ------------------------------------------------------------------ 2. reference comparison
# shellcheck disable=SC2086  # the lists are meant to split into arguments
run comparison "$PYTHON" -m distill.cli bench $RECIPES --random-weights --device "$DEVICE" $BENCH_ARGS

# ------------------------------------------------------------------ 3. levers on the 1B student
declare -A LEVERS=(
    [lever_recipe]=""
    [lever_whisper_fp32]="--encoder-dtype float32"
    [lever_attn_eager]="--attn eager"
    [lever_attn_sdpa]="--attn sdpa"
    [lever_static_cache]="--static-cache"
    [lever_static_cache_compiled]="--static-cache --compile-decode"
)
LEVER_NAMES=${LEVER_NAMES:-"lever_recipe lever_whisper_fp32 lever_attn_eager lever_attn_sdpa lever_static_cache lever_static_cache_compiled"}
for name in $LEVER_NAMES; do
    # shellcheck disable=SC2086
    run "$name" "$PYTHON" -m distill.cli bench "$LEVER_RECIPE" --random-weights --device "$DEVICE" \
        $LEVER_ARGS ${LEVERS[$name]}
done

# ------------------------------------------------------------------ 4. losses
# shellcheck disable=SC2086
run losses "$PYTHON" benchmarks/bench_losses.py --device "$DEVICE" $LOSS_ARGS

# ------------------------------------------------------------------ summary
{
    echo "# GPU check ($(date -u '+%F %T UTC'))"
    echo
    echo '```'
    cat "$OUT/environment.txt"
    echo '```'
    for name in comparison $LEVER_NAMES losses; do
        echo
        echo "## $name"
        echo
        cat "$OUT/$name.md" 2>/dev/null
    done
} >"$OUT/summary.md"
echo "tables: $OUT/summary.md (exit $status)"
exit $status
