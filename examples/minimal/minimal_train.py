"""The contract's minimum: a loop that reports only step, samples, ce and num_classes, and no head metrics.

A softmax classifier on Gaussian clusters, with its own config keys (``lr_head``, ``accum``, ...).
The search tunes it and stops its stuck trials; with no head metrics reported, their cause is
``unknown`` (add ``reid_core.monitor.HeadMonitor`` to have one named).

    cd examples/minimal
    reid-tune search --trainable minimal_train:train --config defaults.yaml --space space.yaml
"""

import torch
import torch.nn.functional as F


def train(config: dict, report) -> dict:
    gen = torch.Generator().manual_seed(config["seed"])
    classes, dim, batch, accum = config["classes"], config["dim"], config["batch"], config["accum"]
    centres = torch.randn(classes, dim, generator=gen) * config["spread"]
    head = torch.nn.Linear(dim, classes, bias=False)
    torch.nn.init.normal_(head.weight, std=0.001)
    optimizer = torch.optim.SGD(head.parameters(), lr=config["lr_head"], momentum=0.9)
    for step in range(1, config["steps"] + 1):
        ce = 0.0
        for _ in range(accum):
            labels = torch.randint(classes, (batch,), generator=gen)
            features = centres[labels] + torch.randn(batch, dim, generator=gen)
            loss = F.cross_entropy(head(features), labels)
            (loss / accum).backward()
            ce += loss.item() / accum
        optimizer.step()
        optimizer.zero_grad()
        report({"step": step, "samples": step * batch * accum, "ce": ce, "num_classes": classes})
    return {"steps": config["steps"]}
