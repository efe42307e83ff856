"""Time and peak memory of distill.data.audio.load_audio on files that used to be costly.

    python benchmarks/bench_audio_load.py odd-rate   # 0.2 s PCM16 WAV at 16001 Hz
    python benchmarks/bench_audio_load.py long       # 40 min PCM16 WAV at 44.1 kHz (211 MB)

Each case writes its file (not timed), then loads it once in this fresh process and prints one
JSON line: seconds for load_audio and the process's peak RSS (VmHWM) minus its RSS just before
the load, in MB. Put another checkout's folder first on PYTHONPATH to measure that version.
"""

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

CASES = {"odd-rate": (16001, 0.2), "long": (44100, 40 * 60.0)}


def _status_kb(field: str) -> int:
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", status, re.M).group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", choices=sorted(CASES))
    args = parser.parse_args()
    rate, seconds = CASES[args.case]
    from distill.data.audio import load_audio

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "clip.wav"
        with sf.SoundFile(path, "w", rate, 1, subtype="PCM_16") as out:
            block, left = rate * 60, round(rate * seconds)
            phase = np.arange(block) / rate
            while left > 0:
                n = min(block, left)
                out.write((0.5 * np.sin(2 * np.pi * 440 * phase[:n])).astype(np.float32))
                left -= n
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        before = _status_kb("VmRSS")
        started = time.perf_counter()
        clip = load_audio(path)
        elapsed = time.perf_counter() - started
        peak = _status_kb("VmHWM") - before
    print(
        json.dumps(
            {
                "case": args.case,
                "module": sys.modules["distill.data.audio"].__file__,
                "seconds": round(elapsed, 3),
                "peak_mb_above_start": round(peak / 1024, 1),
                "samples": clip.waveform.numel(),
            }
        )
    )


if __name__ == "__main__":
    main()
