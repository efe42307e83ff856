"""distill: knowledge distillation for small, fast SALMONN-class audio language models."""

__version__ = "0.1.0"
