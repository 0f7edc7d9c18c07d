"""An image classifier with its own training loop, as a `TrainFunction`.

The loop is the user's: mixed precision on CUDA, gradient clipping, a checkpoint lrtune can
resume from. lrtune decides the rate (`ctx.lr_scheduler`), the seed and the device, and hears
about every epoch (`ctx.report`). The images are scikit-learn's 8x8 digits (shipped with it).
"""

from __future__ import annotations

import math

import torch
from lrtune.workers import TrainFunction, TrialContext
from sklearn.datasets import load_digits
from torch import nn
from torch.nn import functional as F


def _data(n_val: int) -> tuple[torch.Tensor, ...]:
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    images, labels = images[order], labels[order]
    return images[n_val:], labels[n_val:], images[:n_val], labels[:n_val]


class SmallCNN(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        self.head = nn.Linear(2 * width * 16, 10)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def make(
    batch_size: int = 64, width: int = 8, clip_norm: float = 1.0, n_val: int = 297
) -> TrainFunction:
    n_train = 1797 - n_val
    steps_per_epoch = math.ceil(n_train / batch_size)

    def train(ctx: TrialContext) -> None:
        x_train, y_train, x_val, y_val = (t.to(ctx.device) for t in _data(n_val))
        model = SmallCNN(width).to(ctx.device)
        optimizer = torch.optim.AdamW(ctx.param_groups(model), weight_decay=0.01)
        scheduler = ctx.lr_scheduler(optimizer)
        use_amp = ctx.device.type == "cuda"
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
        start = 1
        state = ctx.load_checkpoint()
        if state is not None:  # resumed after a lost worker: go on where the checkpoint was
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            start = state["epoch"] + 1
        for epoch in range(start, ctx.epochs + 1):
            model.train()
            order = torch.randperm(n_train, device=ctx.device)
            losses = []
            for first in range(0, n_train, batch_size):
                index = order[first : first + batch_size]
                with torch.autocast(ctx.device.type, enabled=use_amp):
                    loss = F.cross_entropy(model(x_train[index]), y_train[index])
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                losses.append(loss.item())
            model.eval()
            with torch.no_grad():
                logits = model(x_val).float()
                val_loss = F.cross_entropy(logits, y_val).item()
                accuracy = (logits.argmax(dim=1) == y_val).float().mean().item()
            if ctx.checkpoint_due(epoch):  # saved with this epoch's report
                ctx.save_checkpoint(
                    {
                        "epoch": epoch,
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict(),
                    }
                )
            train_loss = sum(losses) / len(losses)
            if ctx.report(epoch, train_loss=train_loss, val_loss=val_loss, val_accuracy=accuracy):
                return  # cancelled, stopped early or diverged

    return TrainFunction(train, steps_per_epoch=steps_per_epoch)
