"""SALMONN-style students: Whisper + BEATs encoders, window Q-Former, projection, QLoRA or MoE LLM."""
