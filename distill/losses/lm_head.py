"""lm_head matmuls for one token chunk: logits forward, gradients backward.

Why a class: the matmul dtype is a policy. On GPUs the matmul runs in the weight's dtype
(or the autocast dtype), as autocast would, and so it does on CPUs with AMX bf16 tiles (Intel
Sapphire Rapids and later), where oneDNN's bf16 GEMM runs at 4.4x fp32's (780 against 179 GFLOPS
on 2 cores, [4096, 2048] x [2048, 4096]; BENCHMARKS.md, "KD loss beside its peers"). On CPUs
without bf16 units PyTorch's bf16 GEMM is 5-200x slower than fp32 (measured 0.3-8 vs 45-170
GFLOPS on AVX2), so a low-precision weight is upcast to fp32 one vocab block at a time: a full
fp32 copy of a 128k x 2048 head would be 1 GB. Logits are always returned in fp32 (fp64 for fp64
inputs); a low-precision matmul rounds them to its dtype first, as on a GPU.
"""

import torch
from torch import Tensor

UPCAST_BLOCK_ROWS = 4096  # vocab rows upcast at once on CPU (32 MB at H=2048)
_LOW_PRECISION = (torch.bfloat16, torch.float16)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for everything but fp64 (kept so gradcheck can run in double)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def cpu_has_bf16_tiles() -> bool:
    """Whether this CPU has AMX bf16 tiles (torch's own CPUID check)."""
    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


def matmul_dtype(weight: Tensor) -> torch.dtype:
    """Call outside any autocast-disabled region: it reads the caller's autocast state."""
    device = weight.device.type
    dtype = weight.dtype
    if dtype != torch.float64 and torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
    if device == "cpu" and dtype in _LOW_PRECISION:
        return dtype if dtype == torch.bfloat16 and cpu_has_bf16_tiles() else torch.float32
    return dtype


class LMHead:
    def __init__(self, weight: Tensor, bias: Tensor | None, mm_dtype: torch.dtype, acc_dtype):
        self.upcast_blocks = weight.device.type == "cpu" and weight.dtype != mm_dtype
        if not self.upcast_blocks and weight.dtype != mm_dtype:
            weight = weight.to(mm_dtype)  # once per call, as autocast does
        self.weight, self.bias = weight, bias
        self.mm_dtype, self.acc_dtype = mm_dtype, acc_dtype
        self.vocab = weight.shape[0]
        self.block_rows = UPCAST_BLOCK_ROWS if self.upcast_blocks else self.vocab
        self._scratch: Tensor | None = None

    def _blocks(self):
        """Yield (vocab slice, weight rows in the matmul dtype)."""
        for start in range(0, self.vocab, self.block_rows):
            cols = slice(start, min(start + self.block_rows, self.vocab))
            if not self.upcast_blocks:
                yield cols, self.weight[cols]
                continue
            if self._scratch is None:
                shape = (min(self.block_rows, self.vocab), self.weight.shape[1])
                self._scratch = torch.empty(shape, dtype=self.mm_dtype, device=self.weight.device)
            block = self._scratch[: cols.stop - cols.start]
            block.copy_(self.weight[cols])
            yield cols, block

    def sweep(
        self, hidden: Tensor | None, grad_logits: Tensor | None
    ) -> tuple[Tensor | None, Tensor | None]:
        """(logits of `hidden`, hidden-gradient of `grad_logits`), either may be None.

        The chunk loop passes this chunk's hidden and the previous chunk's grad_logits so
        that each vocab block is upcast once for both matmuls.
        """
        hidden = None if hidden is None else hidden.to(self.mm_dtype)
        grad_logits = None if grad_logits is None else grad_logits.to(self.mm_dtype)
        if not self.upcast_blocks:
            logits = None if hidden is None else (hidden @ self.weight.T).to(self.acc_dtype)
            grad_hidden = None if grad_logits is None else grad_logits @ self.weight
        else:
            logits = grad_hidden = None
            if hidden is not None:
                logits = hidden.new_empty(hidden.shape[0], self.vocab, dtype=self.acc_dtype)
            if grad_logits is not None:
                grad_hidden = grad_logits.new_zeros(grad_logits.shape[0], self.weight.shape[1])
            for cols, block in self._blocks():
                if logits is not None:
                    logits[:, cols] = hidden @ block.T
                if grad_hidden is not None:
                    grad_hidden.addmm_(grad_logits[:, cols], block)
        if logits is not None and self.bias is not None:
            logits += self.bias.to(self.acc_dtype)
        return logits, grad_hidden

    def add_grad_weight(self, grad_weight: Tensor, grad_logits: Tensor, hidden: Tensor) -> None:
        """grad_weight (fp32, [V, H]) += grad_logits.T @ hidden, one vocab block at a time."""
        grad_logits, hidden = grad_logits.to(self.mm_dtype), hidden.to(self.mm_dtype)
        for start in range(0, self.vocab, UPCAST_BLOCK_ROWS):
            cols = slice(start, min(start + UPCAST_BLOCK_ROWS, self.vocab))
            grad_weight[cols] += (grad_logits[:, cols].T @ hidden).to(grad_weight.dtype)
