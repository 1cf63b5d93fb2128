"""How per-task losses become the one loss a step minimises. Loss weightings are registered by name
(registry.OBJECTIVES; the recipe's `loss_weighting:`), one small class each, like the samplers:

- static: sum of weight_t * loss_t (each task's `weight:`);
- uncertainty: Kendall et al. (2018): sum of exp(-s_t) * loss_t + s_t, with a learned log-variance s_t
  per task, trained at its own learning rate (`loss_weighting_lr`, default heads_lr).

`preserve_embeddings` is an extra term, not a weighting: while the backbone trains, it keeps the
sentence embedding near a frozen copy's (1 - cosine), so `embed` and similarity do not drift.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config.train import TrainConfig
from ..registry import OBJECTIVES


class GradScale(torch.autograd.Function):
    """Identity forward; scales the gradient flowing back into the backbone (0 = cut it)."""

    @staticmethod
    def forward(ctx, x, scale: float):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


class LossWeighting:
    def __init__(self, cfg: TrainConfig, tasks: list[str]):
        self.cfg, self.tasks = cfg, tasks

    def param_groups(self) -> list[dict]:
        """Optimizer groups for the weighting's own parameters (none for a static weighting)."""
        return []

    def combine(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def state(self) -> dict[str, torch.Tensor]:
        """Tensors a checkpoint keeps."""
        return {}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        pass

    def log(self) -> dict | None:
        """What metrics.jsonl records per epoch (None: nothing)."""
        return None


@OBJECTIVES.register("static")
class StaticWeights(LossWeighting):
    def combine(self, losses):
        total = torch.zeros(())
        for t, loss in losses.items():
            total = total + self.cfg.tasks[t].weight * loss
        return total


@OBJECTIVES.register("uncertainty")
class UncertaintyWeights(LossWeighting):
    def __init__(self, cfg: TrainConfig, tasks: list[str]):
        super().__init__(cfg, tasks)
        self.log_vars = torch.nn.Parameter(torch.zeros(len(tasks)))

    def param_groups(self):
        return [{"params": [self.log_vars], "lr": self.cfg.loss_weighting_lr or self.cfg.heads_lr, "weight_decay": 0.0}]

    def combine(self, losses):
        total = torch.zeros(())
        for t, loss in losses.items():
            lv = self.log_vars[self.tasks.index(t)]
            total = total + torch.exp(-lv) * loss + lv
        return total

    def state(self):
        return {"log_vars": self.log_vars.detach().clone()}

    def load_state(self, tensors):
        if "log_vars" in tensors:
            with torch.no_grad():
                self.log_vars.copy_(tensors["log_vars"])

    def log(self):
        return dict(zip(self.tasks, self.log_vars.detach().tolist()))


def make_weighting(cfg: TrainConfig, tasks: list[str]) -> LossWeighting:
    return OBJECTIVES.get(cfg.loss_weighting)(cfg, tasks)


class PreserveEmbeddings:
    """weight * mean(1 - cos(student, frozen teacher)) on the step's sentence embeddings."""

    def __init__(self, backbone, weight: float):
        import copy

        self.weight = weight
        self.teacher = copy.deepcopy(backbone)
        self.teacher.model.eval()
        for p in self.teacher.model.parameters():
            p.requires_grad_(False)

    def term(self, batch, student: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t = {k: torch.from_numpy(getattr(batch, k)) for k in ("input_ids", "attention_mask", "token_type_ids")}
            target = self.teacher.forward(**t, hidden_states=False)["sentence_embedding"]
        return self.weight * (1 - F.cosine_similarity(student, target, dim=-1)).mean()
