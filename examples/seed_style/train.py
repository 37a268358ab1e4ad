"""训练 (train): the seed team's loop, with their [guide4-dbg] prints replaced by one HeadMonitor call.

    python train.py                      # a plain run, prints every cfg.log_every steps

``train(cfg, on_step)`` calls ``on_step(metrics, checkpoint=...)`` once per optimizer step (the
glue in tune_glue.py passes the harness's report there) and continues from ``resume`` (a state
it handed out as ``checkpoint``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from configs.config import Config
from models.model import Model
from reid_core.monitor import HeadMonitor
from reid_core.synthetic import make_synthetic


def load_data(cfg: Config):
    split, _ = make_synthetic(cfg.num_classes, cfg.images_per_id, tuple(cfg.image_size), seed=0)
    images = torch.from_numpy(split.images).float().div(255.0)
    _, labels = torch.unique(torch.from_numpy(split.pids), sorted=True, return_inverse=True)  # ids -> 0..C-1
    return images, labels


def debug_print(metrics: dict, every: int) -> None:
    if metrics["step"] % every == 0:
        print(f"[guide4-dbg] step={metrics['step']} ce={metrics['ce']:.4f} head |w|={metrics['head_weight_norm']:.4f} "
              f"grad-norm ≈ {metrics['head_grad_norm']:.4f}")


def train(cfg: Config, on_step=None, resume: dict | None = None) -> dict:
    if on_step is None:
        on_step = lambda metrics, checkpoint=None: debug_print(metrics, cfg.log_every)  # noqa: E731
    torch.manual_seed(cfg.seed)
    images, labels = load_data(cfg)
    model = Model(cfg.num_classes, cfg.backbone, tuple(cfg.image_size))
    optimizer = torch.optim.AdamW(model.get_learnable_params(cfg), weight_decay=cfg.weight_decay)
    monitor = HeadMonitor(model.bn_neck.classifier, optimizer, neck=model.bn_neck)
    step, generator = 0, torch.Generator().manual_seed(cfg.seed)
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        monitor.load_state_dict(resume["monitor"])
        step = resume["step"]
        generator.set_state(resume["generator"])
    model.train()
    while step < cfg.max_steps:
        ce_sum = 0.0
        for _ in range(cfg.gradient_accumulation_steps):
            idx = torch.randint(len(labels), (cfg.batch_size,), generator=generator)
            batch_labels = labels[idx]
            assert batch_labels.min() >= 0 and batch_labels.max() < model.num_classes, "guide4.py: 标签越界!"
            logits = model(images[idx])
            monitor.observe_labels(batch_labels)  # the pre-flight checks their range at the first step
            loss = F.cross_entropy(logits, batch_labels)
            (loss / cfg.gradient_accumulation_steps).backward()
            ce_sum += loss.item()
        head = monitor.after_backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        metrics = {
            "step": step,
            "samples": step * cfg.batch_size * cfg.gradient_accumulation_steps,
            "ce": ce_sum / cfg.gradient_accumulation_steps,
            "num_classes": cfg.num_classes,
            "micro_batches": cfg.gradient_accumulation_steps,
            **head,
            **monitor.after_step(),
        }
        on_step(metrics, checkpoint=lambda: {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "monitor": monitor.state_dict(),
            "step": step, "generator": generator.get_state(),
        })  # fmt: skip
    return {"steps": step}


if __name__ == "__main__":
    train(Config(max_steps=300))
