"""Adam for fit's few small tensors, without torch.optim.

torch.optim's constructor imports torch._dynamo: about 2 s on a 2-core CPU, most of `sentmtl fit`'s
time on 48 examples. The update is the one torch.optim.Adam makes on CPU tensors with its defaults
and no weight decay (its single-tensor path: the same operations in the same order), so the heads
fit trains are the ones it trained before."""

from __future__ import annotations

from collections.abc import Iterable

import torch


class Adam:
    """Adam (Kingma and Ba, 2015): zero_grad() then step() after each backward()."""

    def __init__(
        self, params: Iterable[torch.Tensor], lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
    ) -> None:
        self.params = list(params)
        self.lr, self.betas, self.eps = lr, betas, eps
        self.exp_avg = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.steps = [0] * len(self.params)  # each tensor's own, as torch.optim keeps it: one with no grad waits

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        beta1, beta2 = self.betas
        for i, (p, avg, avg_sq) in enumerate(zip(self.params, self.exp_avg, self.exp_avg_sq, strict=True)):
            if p.grad is None:
                continue
            self.steps[i] += 1
            step_size = self.lr / (1 - beta1 ** self.steps[i])
            correction2_sqrt = (1 - beta2 ** self.steps[i]) ** 0.5
            avg.lerp_(p.grad, 1 - beta1)
            avg_sq.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            denom = (avg_sq.sqrt() / correction2_sqrt).add_(self.eps)
            p.addcdiv_(avg, denom, value=-step_size)
