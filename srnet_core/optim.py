"""Adam for a single tensor, for the per-pair optimisations (instance optimisation, affine refinement).

torch.optim.Adam's first `step` imports torch._dynamo (to mark the step as a graph break for
torch.compile): 1.8 s of a ~5 s `register` job on CI's CPU, paid again by every one of a dataset's
registrations and affine steps, none of which is ever compiled. This class does the same arithmetic
as torch.optim.Adam's single-tensor path (the one torch takes for CPU tensors: no foreach, no
amsgrad, no weight decay), in the same order, so its steps are bit-identical to it
(tests/test_optim.py); training keeps torch.optim.Adam, whose import cost is small next to a
training run and whose state goes into the checkpoints.
"""

from __future__ import annotations

import torch


class SingleTensorAdam:
    def __init__(self, param: torch.Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        if not param.requires_grad:
            raise ValueError("SingleTensorAdam needs a tensor that requires grad")
        self.param, self.lr, self.eps = param, float(lr), float(eps)
        self.beta1, self.beta2 = float(betas[0]), float(betas[1])
        self.exp_avg = torch.zeros_like(param, memory_format=torch.preserve_format)
        self.exp_avg_sq = torch.zeros_like(param, memory_format=torch.preserve_format)
        self.steps = 0

    def zero_grad(self) -> None:
        self.param.grad = None

    @torch.no_grad()
    def step(self) -> None:
        grad = self.param.grad
        if grad is None:
            return
        self.steps += 1
        self.exp_avg.lerp_(grad, 1 - self.beta1)
        self.exp_avg_sq.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
        step = float(self.steps)          # torch keeps the count in a float32 tensor and reads .item()
        bias_correction1 = 1 - self.beta1 ** step
        bias_correction2 = 1 - self.beta2 ** step
        denom = (self.exp_avg_sq.sqrt() / bias_correction2 ** 0.5).add_(self.eps)
        self.param.addcdiv_(self.exp_avg, denom, value=-(self.lr / bias_correction1))
