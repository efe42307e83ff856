"""Evaluation: ASR word error rate, audio-caption metrics, efficiency, and a readable report."""
