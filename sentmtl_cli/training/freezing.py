"""What trains in the backbone, epoch by epoch: nothing (frozen), the top N transformer layers, or
everything, with an optional gradual-unfreezing schedule."""

from __future__ import annotations

from ..config.train import TrainConfig
from ..errors import SentmtlError


def _encoder_layers(model) -> list:
    enc = getattr(model, "encoder", None)
    layers = getattr(enc, "layer", None)
    if layers is None:
        raise SentmtlError("backbone.train: top/unfreeze needs a BERT-like encoder (model.encoder.layer)")
    return list(layers)


def top_layers_at(cfg: TrainConfig, epoch: int, num_layers: int) -> int:
    """How many of the top transformer layers train in this epoch (0 = frozen backbone)."""
    b = cfg.backbone
    n = {"frozen": 0, "full": num_layers, "top": b.top_layers}[b.train]
    for step in sorted(b.unfreeze, key=lambda s: s.epoch):
        if epoch >= step.epoch:
            n = step.top_layers
    return min(n, num_layers)


def backbone_ever_trains(cfg: TrainConfig, num_layers: int) -> bool:
    return any(top_layers_at(cfg, e, num_layers) > 0 for e in range(1, cfg.epochs + 1))


def set_backbone_trainable(backbone, n_top: int, num_layers: int) -> None:
    """Only the top n_top layers get gradients and train mode (dropout); everything below stays in
    eval mode, computing exactly what inference computes, so a frozen layer adds no noise."""
    model = backbone.model
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    if n_top <= 0:
        return
    if n_top >= num_layers:  # "full": the embeddings train too
        for name, p in model.named_parameters():
            if not name.startswith("pooler"):
                p.requires_grad_(True)
        model.train()
        return
    layers = _encoder_layers(model)
    for layer in layers[len(layers) - n_top :]:
        for p in layer.parameters():
            p.requires_grad_(True)
        layer.train()
