"""The teacher cache under faults: a full disk mid-shard, two generate-teacher jobs at once.

A real ENOSPC needs a full file system, which a test cannot make on a shared machine: the full
disk is simulated by patching the shard's ``write`` (or the index write) to fail with ENOSPC
after part of the bytes, said so at each use. The two jobs are two real processes.
"""

from __future__ import annotations

import errno
import subprocess
import sys
import time

import numpy as np
import pytest

from teachers.cache import CachedSample, CacheMeta, CacheWriter, open_cache, verify_cache
from teachers.cache import writer as writer_module
from teachers.cache.writer import CacheWriteError, cache_lock


def make_meta() -> CacheMeta:
    return CacheMeta(
        teacher="t", teacher_revision=None, tokenizer_fingerprint="fp",
        target_tokenizer_fingerprint="fp", mode="score", k=4, logprob_mode="raw_logprobs",
        temperature=1.0, prompt_template_hash="h", vocab_size=1000,
    )


def sample(seed: int) -> CachedSample:
    rng = np.random.default_rng(seed)
    logprobs = -np.sort(rng.random((5, 4)).astype(np.float32) * 5, axis=1)
    return CachedSample(rng.integers(0, 1000, 5), rng.integers(0, 1000, (5, 4)), logprobs, None,
                        f"text {seed}")


class DiskFillsUp:
    """Wraps a shard file: after ``room`` more bytes, write() fails as on a full disk (ENOSPC),
    having written what fit (as write(2) does)."""

    def __init__(self, file, room: int):
        self.file, self.room = file, room

    def write(self, data: bytes) -> int:
        if len(data) > self.room:
            self.file.write(data[: self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)


def assert_clean_cache(directory, ids: set[str]) -> None:
    report = verify_cache(directory)
    assert report.ok and not report.warnings, report
    assert open_cache(directory).ids() == ids


def test_a_full_disk_mid_shard_keeps_the_finished_shards(tmp_path):
    meta = make_meta()
    writer = CacheWriter(tmp_path, meta, shard_size=2)
    for i in range(3):  # one finished shard (s0, s1), one open (s2)
        writer.add(f"s{i}", sample(i))
    writer._file = DiskFillsUp(writer._file, room=10)  # simulated ENOSPC (see module text)
    with pytest.raises(CacheWriteError) as caught:
        writer.add("s3", sample(3))
    writer.close()

    message = str(caught.value)
    assert "cannot write the shard (No space left on device)" in message
    assert "the 1 shard(s) finished before it are kept" in message
    assert_clean_cache(tmp_path, {"s0", "s1"})  # s2 and s3 were never visible, nothing torn

    with CacheWriter(tmp_path, meta, shard_size=2) as rerun:  # space again: a rerun completes
        for i in (2, 3):
            rerun.add(f"s{i}", sample(i))
    assert_clean_cache(tmp_path, {"s0", "s1", "s2", "s3"})
    stored = open_cache(tmp_path).get("s3")
    np.testing.assert_array_equal(stored.topk_ids, sample(3).topk_ids)


def test_a_full_disk_while_the_index_is_written_leaves_the_shard_invisible(tmp_path, monkeypatch):
    meta = make_meta()
    writer = CacheWriter(tmp_path, meta, shard_size=2)
    writer.add("s0", sample(0))
    writer.add("s1", sample(1))  # shard 1 finished
    writer.add("s2", sample(2))
    real_write = writer_module._write_durably

    def index_write_fails(path, data):  # simulated ENOSPC (see module text)
        real_write(path, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer_module, "_write_durably", index_write_fails)
    with pytest.raises(CacheWriteError, match="cannot finish shard .*No space left on device"):
        writer.add("s3", sample(3))
    monkeypatch.undo()

    assert_clean_cache(tmp_path, {"s0", "s1"})
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_the_lock_is_exclusive_and_names_its_holder(tmp_path):
    # A second process tries the lock while this one holds it: it must wait until released.
    probe = (
        "import sys, time; from teachers.cache.writer import cache_lock; t = time.monotonic()\n"
        "with cache_lock(sys.argv[1], log=sys.stderr): print(f'{time.monotonic() - t:.2f}')"
    )
    with cache_lock(tmp_path) as waited:
        assert not waited
        assert (tmp_path / ".lock").read_text().startswith("pid ")
        other = subprocess.Popen([sys.executable, "-c", probe, str(tmp_path)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(3.0)
        assert other.poll() is None  # still waiting
    out, err = other.communicate(timeout=60)
    assert other.returncode == 0, err
    assert float(out) >= 2.0
    assert f"waiting: {tmp_path} is being written by pid " in err
    assert not (tmp_path / ".lock").exists()  # removed on release


@pytest.mark.slow
def test_two_generate_teacher_processes_on_one_cache_store_each_id_once(
    tmp_path, smollm2_dir, helpers
):
    records = helpers.sample_records(10)
    manifest = helpers.write_manifest(tmp_path / "m.jsonl", records)
    cache = tmp_path / "cache"
    recipe = helpers.write_recipe(tmp_path / "r.yaml", smollm2_dir, manifest, cache,
                                  backend="transformers", top_k=4, shard_size=2)
    command = [sys.executable, "-m", "distill.cli", "generate-teacher", str(recipe),
               "--no-progress"]
    jobs = [subprocess.Popen(command, cwd=helpers.root, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [job.communicate(timeout=900) for job in jobs]

    for job, (_, err) in zip(jobs, outputs, strict=True):
        assert job.returncode == 0, err
    errs = [err for _, err in outputs]
    assert sum("waiting: " in err for err in errs) == 1  # one job waited for the other
    written = []
    for err in errs:
        line = next(line for line in err.splitlines() if line.startswith("samples"))
        written.append(int(line.split(" written")[0].rsplit(" ", 1)[1]))
    assert sorted(written) == [0, 10]  # the waiting job found everything done: none doubled
    assert_clean_cache(cache, {r["id"] for r in records})
