"""The student trainer: data, loss mix, accelerate loop, dynamic clipping, exact-resume checkpoints."""
