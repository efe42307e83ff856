"""Loading the student's language model: any causal LM, 4-bit NF4 (QLoRA), LoRA, MoE conversion.

Why not peft's ``prepare_model_for_kbit_training``: it casts every non-quantised weight
(embeddings, norms, lm_head) to fp32, which costs memory for nothing when training in bf16. We
only freeze the base, turn on non-reentrant gradient checkpointing if asked (which needs no
input-grad hook: the audio embeddings already require grad), and add the adapters.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, PreTrainedModel

from students.config import LLMConfig, MoEConfig, QuantizationConfig

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def torch_dtype(name: str) -> torch.dtype:
    return DTYPES[name]


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


def load_tokenizer(cfg: LLMConfig):
    kwargs = {"revision": cfg.revision}
    if cfg.gguf_file:
        kwargs["gguf_file"] = cfg.gguf_file
    return AutoTokenizer.from_pretrained(cfg.name_or_path, **kwargs)


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
) -> PreTrainedModel:
    """The causal LM of ``cfg``: base frozen, optionally 4-bit, MoE-converted and LoRA-wrapped
    (then a ``peft.PeftModel``). Only LoRA weights and MoE gates are trainable."""
    use_moe = moe is not None and moe.enabled
    quantize = cfg.quantization.load_in_4bit
    kwargs: dict = {
        "revision": cfg.revision,
        "dtype": dtype,
        "attn_implementation": resolve_attn_implementation(cfg.attn_implementation),
    }
    if cfg.gguf_file:
        kwargs["gguf_file"] = cfg.gguf_file
    if quantize and not use_moe:
        kwargs["quantization_config"] = bnb_config(cfg.quantization)
    if device is not None:
        kwargs["device_map"] = {"": str(device)}
    model = AutoModelForCausalLM.from_pretrained(cfg.name_or_path, **kwargs)
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


def causal_lm(model: nn.Module) -> PreTrainedModel:
    """The transformers model under a possible peft wrapper (LoRA layers stay injected)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def end_token_ids(tokenizer, model: PreTrainedModel | None = None) -> list[int]:
    """Every id that ends an answer: the tokenizer's EOS and the generation config's EOS ids.

    Upstream stopped on id 2 (LLaMA-2's EOS) whatever the tokenizer; LLaMA-3 ends with
    ``<|eot_id|>`` or ``<|end_of_text|>``, which both must stop generation."""
    from distill.data.targets import end_token_id

    ids = [end_token_id(tokenizer)]
    generation_config = getattr(model, "generation_config", None)
    extra = getattr(generation_config, "eos_token_id", None)
    if extra is not None:
        ids += [extra] if isinstance(extra, int) else list(extra)
    return list(dict.fromkeys(int(i) for i in ids))
