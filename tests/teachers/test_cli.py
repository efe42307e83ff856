"""The teacher subcommands: help that teaches, exit codes, and errors that say what to do."""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pytest

from distill.teacher_cli import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, add_parsers
from teachers.cache import CachedSample, CacheMeta, CacheWriter
from teachers.server import free_port


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="distill")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def small_cache(directory) -> None:
    meta = CacheMeta(
        teacher="t", teacher_revision=None, tokenizer_fingerprint="a",
        target_tokenizer_fingerprint="a", mode="score", k=4, logprob_mode="raw_logprobs",
        temperature=1.0, prompt_template_hash="h", vocab_size=1000,
    )
    rng = np.random.default_rng(0)
    with CacheWriter(directory, meta, shard_size=2) as writer:
        for i in range(3):
            ids = rng.integers(0, 1000, (5, 4))
            writer.add(f"s{i}", CachedSample(ids[:, 0], ids, -rng.random((5, 4)), None, "x"))


@pytest.mark.parametrize("name", ["serve-teacher", "generate-teacher", "cache"])
def test_help_teaches_and_has_an_example(capsys, name):
    with pytest.raises(SystemExit) as info:
        run([name, "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "example:\n  distill " + name in text
    assert len(text.splitlines()) > 10


def test_cache_stats_and_verify(tmp_path, capsys):
    small_cache(tmp_path)
    assert run(["cache", "stats", str(tmp_path)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "samples      3 in 2 shard(s)" in out and "tokens       15" in out
    assert run(["cache", "verify", str(tmp_path)]) == EXIT_OK
    assert "ok: 3 samples, 15 tokens in 2 shard(s)" in capsys.readouterr().out


def test_verify_fails_on_a_flipped_byte_and_names_the_record(tmp_path, capsys):
    small_cache(tmp_path)
    shard = sorted(tmp_path.glob("*.bin"))[0]
    data = bytearray(shard.read_bytes())
    data[40] ^= 1
    shard.write_bytes(bytes(data))
    assert run(["cache", "verify", str(tmp_path)]) == EXIT_FAILED
    captured = capsys.readouterr()
    assert "FAILED" in captured.out
    assert "error: " in captured.err and "checksum mismatch" in captured.err


def test_cache_on_a_missing_or_foreign_folder_is_bad_input(tmp_path, capsys):
    assert run(["cache", "verify", str(tmp_path / "nope")]) == EXIT_BAD_INPUT
    assert run(["cache", "stats", str(tmp_path)]) == EXIT_BAD_INPUT
    assert "not a teacher cache" in capsys.readouterr().err
    assert run(["cache", "verify", str(tmp_path)]) == EXIT_FAILED


def test_generate_with_a_bad_recipe_is_bad_input(tmp_path, capsys):
    (tmp_path / "r.yaml").write_text("name: x\nteacher: {top_k: 0}\n")
    assert run(["generate-teacher", str(tmp_path / "r.yaml")]) == EXIT_BAD_INPUT
    assert "teacher.top_k" in capsys.readouterr().err


@pytest.mark.slow
def test_a_mismatched_tokenizer_is_refused_naming_both(tmp_path, capsys, smollm2_dir,
                                                       other_tokenizer_dir, helpers):
    manifest = helpers.write_manifest(tmp_path / "m.jsonl", helpers.sample_records(2))
    recipe = helpers.write_recipe(tmp_path / "r.yaml", smollm2_dir, manifest, tmp_path / "cache",
                                  tokenizer=str(other_tokenizer_dir))
    with recipe.open("a") as handle:  # the cross-tokenizer path off: refused
        handle.write("loss: {cross_tokenizer: 'off'}\n")
    assert run(["generate-teacher", str(recipe), "--endpoint", "http://127.0.0.1:9"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "disagree on token ids" in err
    assert str(other_tokenizer_dir) in err and str(smollm2_dir) in err
    assert not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_server_down_retries_then_fails_clearly_writing_nothing(tmp_path, capsys, smollm2_dir,
                                                                helpers):
    manifest = helpers.write_manifest(tmp_path / "m.jsonl", helpers.sample_records(3))
    cache = tmp_path / "cache"
    recipe = helpers.write_recipe(tmp_path / "r.yaml", smollm2_dir, manifest, cache, max_retries=2)
    url = f"http://127.0.0.1:{free_port()}"
    assert run(["generate-teacher", str(recipe), "--endpoint", url, "--no-progress"]) == EXIT_FAILED
    err = capsys.readouterr().err
    assert f"teacher endpoint {url} did not answer after 3 attempts" in err
    assert "nothing was written" in err
    assert not cache.exists() or not any(cache.iterdir())


@pytest.mark.slow
def test_serve_teacher_reports_a_server_that_dies_during_start_up(tmp_path, capsys, smollm2_dir,
                                                                  helpers):
    manifest = helpers.write_manifest(tmp_path / "m.jsonl", helpers.sample_records(1))
    # The toolkit's python has no vllm: the child exits at once with an ImportError.
    recipe = helpers.write_recipe(tmp_path / "r.yaml", smollm2_dir, manifest, tmp_path / "cache",
                                  python=sys.executable)
    code = run(["serve-teacher", str(recipe), "--port", str(free_port()),
                "--log", str(tmp_path / "server.log")])
    assert code == EXIT_FAILED
    err = capsys.readouterr().err
    assert "error: the vLLM server exited with code 1 during start-up" in err
    assert "No module named vllm" in err or "No module named 'vllm'" in err
