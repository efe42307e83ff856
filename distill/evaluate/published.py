"""Published results and device targets we compare against (docs/reference.md §3).

Their latency and memory were measured on their GPU: compare ours only when measured on the same
kind of GPU. Which CIDEr-D variant produced their AAC numbers is unknown (see captions.py).
"""

PUBLISHED_RESULTS = {
    "baseline_3b": {
        "label": "baseline 3B (published)",
        "asr_wer": 6.34,
        "aac_score": 27.84,
        "memory_gb": 9.17,
        "latency_s": 0.47,
    },
    "team_1b_qlora": {
        "label": "team 1B QLoRA (published)",
        "asr_wer": 5.30,
        "aac_score": 35.49,
        "memory_gb": 4.09,
        "latency_s": 0.36,
    },
}

# What the published figures were measured on: compare a metric only on the same set (by the
# manifests' ``source``) and latency / memory only on a GPU.
PUBLISHED_SETS = {"asr_wer": "librispeech", "aac_score": "audiocaps"}
PUBLISHED_DEVICE = "cuda"

DEVICE_TARGETS = {"memory_gb": 6.0, "ttft_s": 1.0, "tpot_s": 0.1, "asr_latency_s": 0.05}

AAC_SCORE_NOTE = (
    "published AAC numbers are the hackathon evaluator's 'SPIDEr' (v1.0: CIDEr-D x 100; "
    "v1.1: (CIDEr-D + SPICE) / 2); which version produced them is unknown"
)
