"""Pretrain ``reid-tiny`` the way CLIP is pretrained, on synthetic people, and write its weights.

The shipped weights (``reid_core/weights/reid-tiny-synthetic.safetensors``, the
``synthetic`` tag, the default of ``reid-tiny``) come from this recipe, so the
embedded default fine-tunes a *pretrained* backbone as users do with a real CLIP:
a person's images are already close in feature space and a new identity head
learns within the first epoch. The people it sees are drawn from their own data
seed and never share their attributes with the default data set's identities
(train or test), so retrieval on the default's unseen identities is still unseen.

    python -m reid_core.pretrain --out reid-tiny-synthetic.safetensors   # regenerate the shipped file
    python -m reid_core.pretrain --check                                  # ... and compare it with the shipped one

Same recipe, same machine, same ``--threads``: the same file, bit for bit (CPU, fixed
seeds, fused AdamW, safetensors with sorted keys).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import open_clip
import torch
from open_clip.loss import ClipLoss
from safetensors.torch import save_file

from reid_core.data import SYNTHETIC_DATA_SEED, normalise
from reid_core.errors import UserError, cli_exit
from reid_core.flags import ArgumentParser
from reid_core.model import quiet_random_init  # importing reid_core.model registers 'reid-tiny'
from reid_core.schedule import lr_factor
from reid_core.shipped_weights import shipped_file
from reid_core.synthetic import RAW_ID_BASE, Person, attributes, draw_people, make_split

# Its own data seed: a different stream of people than the default data set's (SYNTHETIC_DATA_SEED).
PRETRAIN_DATA_SEED = 1
# The first people of the default data set's stream are excluded by attributes: the default draws
# synthetic_identities * 5/4 of them (500), so any synthetic_identities up to 4,000 stays unseen too.
EXCLUDED_PEOPLE = 5000


@dataclass(frozen=True)
class Recipe:
    """Everything the shipped file depends on; written into its metadata."""

    model: str = "reid-tiny"  # open_clip model pretrained (random init first)
    identities: int = 3000  # synthetic people seen in pretraining (none shares attributes with the default's)
    images_per_identity: int = 4  # images rendered per person, one caption each
    image_size: tuple[int, int] = (64, 32)  # (height, width) in pixels, the default's
    # Optimizer steps: the budget sets how good the starting point is. Measured on the default plain job
    # (R@1 on the default's unseen test ids): 100 steps 24%, 150 38%, 175 46%, 200 58%, 300 69%, 1,500 ~95%.
    # 175 leaves room both ways: backbone_lr 1e-4 lifts it to 54.5%.
    steps: int = 175
    batch_size: int = 128  # image-caption pairs per step, all of different people (ClipLoss negatives)
    lr: float = 1e-3  # AdamW peak learning rate
    weight_decay: float = 0.1  # AdamW decoupled weight decay (CLIP's); none on gains, biases, logit_scale
    warmup_steps: int = 17  # linear LR warm-up (about a tenth of the steps), then cosine to 0
    seed: int = 0  # initialisation and batch order
    data_seed: int = PRETRAIN_DATA_SEED  # which synthetic people are drawn and rendered
    threads: int = 2  # torch CPU threads: part of the recipe, a different count may reorder float sums

    def metadata(self) -> dict[str, str]:
        return {"reid_tune_recipe": json.dumps(dataclasses.asdict(self), sort_keys=True)}


def pretraining_people(count: int, data_seed: int = PRETRAIN_DATA_SEED) -> list[Person]:
    """``count`` people from ``data_seed``'s stream whose attributes differ from each other and from
    the first `EXCLUDED_PEOPLE` of the default data set's stream (its train and test identities)."""
    taken = {attributes(p) for p in draw_people(EXCLUDED_PEOPLE, np.random.default_rng(SYNTHETIC_DATA_SEED))}
    rng = np.random.default_rng(data_seed)
    people: list[Person] = []
    while len(people) < count:
        (person,) = draw_people(1, rng)
        if attributes(person) not in taken:
            taken.add(attributes(person))
            people.append(person)
    return people


def _parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    # open_clip_train's rule: no decay on 1-D tensors (gains, biases) and logit_scale
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "logit_scale" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def pretrain(recipe: Recipe, log: Callable[[str], None] = lambda s: None) -> tuple[dict[str, torch.Tensor], dict]:
    """Run ``recipe``; returns (the model's fp16 state dict, a summary with the loss curve and the time)."""
    started = time.perf_counter()
    torch.set_num_threads(recipe.threads)
    torch.manual_seed(recipe.seed)
    people = pretraining_people(recipe.identities, recipe.data_seed)
    ids = [RAW_ID_BASE + i for i in range(len(people))]
    split = make_split(people, ids, recipe.images_per_identity, recipe.image_size, np.random.default_rng(recipe.data_seed))
    images = torch.from_numpy(split.images)
    tokenizer = open_clip.get_tokenizer(recipe.model)
    tokens = tokenizer(split.captions)
    log(f"rendered {len(images)} images of {len(people)} people in {time.perf_counter() - started:.0f} s")

    with quiet_random_init():  # random init is the point here, not news
        model = open_clip.create_model(recipe.model, force_image_size=tuple(recipe.image_size)).train()
    optimizer = torch.optim.AdamW(
        _parameter_groups(model, recipe.weight_decay), lr=recipe.lr, betas=(0.9, 0.98), eps=1e-6, fused=True
    )
    loss_fn = ClipLoss()
    gen = torch.Generator().manual_seed(recipe.seed)
    per = recipe.images_per_identity
    losses: list[float] = []
    for step in range(recipe.steps):
        lr = recipe.lr * lr_factor(step, recipe.warmup_steps, recipe.steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # distinct people per batch: two pairs of one person would be each other's false negatives
        who = torch.randperm(len(people), generator=gen)[: recipe.batch_size]
        rows = who * per + torch.randint(per, (len(who),), generator=gen)
        batch = normalise(images[rows])
        flip = torch.rand(len(rows), generator=gen) < 0.5
        batch = torch.where(flip.view(-1, 1, 1, 1), batch.flip(-1), batch)
        image_features = model.encode_image(batch, normalize=True)
        text_features = model.encode_text(tokens[rows], normalize=True)
        loss = loss_fn(image_features, text_features, model.logit_scale.exp())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():  # CLIP clamps the learned temperature at 100
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        if (step + 1) % 100 == 0 or step + 1 == recipe.steps:
            log(f"step {step + 1}/{recipe.steps}  clip loss {np.mean(losses[-50:]):.3f}  {time.perf_counter() - started:.0f} s")
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    return state, {"losses": losses, "wall_s": time.perf_counter() - started}


def save_weights(state: dict[str, torch.Tensor], path: Path, recipe: Recipe) -> None:
    """An ordinary open_clip state dict (fp16 safetensors) with the recipe in its metadata; atomic."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        save_file(state, tmp, metadata=recipe.metadata())
        os.chmod(tmp, 0o644)  # mkstemp's 0600 is not what a shipped or shared file should have
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = ArgumentParser(prog="python -m reid_core.pretrain", description=__doc__.split("\n\n")[0])
    defaults = Recipe()
    parser.add_argument("--out", metavar="FILE", help="where to write the weights (.safetensors)")
    parser.add_argument("--check", action="store_true", help="regenerate and compare with the shipped file (exit 1 if they differ)")
    parser.add_argument("--steps", type=int, default=defaults.steps, help=f"optimizer steps (default {defaults.steps})")
    parser.add_argument("--identities", type=int, default=defaults.identities, help=f"synthetic people (default {defaults.identities})")
    parser.add_argument(
        "--images-per-identity", type=int, default=defaults.images_per_identity, help=f"default {defaults.images_per_identity}"
    )
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help=f"default {defaults.batch_size}")
    parser.add_argument("--lr", type=float, default=defaults.lr, help=f"AdamW peak LR (default {defaults.lr})")
    parser.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps, help=f"default {defaults.warmup_steps}")
    parser.add_argument("--seed", type=int, default=defaults.seed, help=f"default {defaults.seed}")
    parser.add_argument("--threads", type=int, default=defaults.threads, help=f"torch CPU threads (default {defaults.threads})")
    args = parser.parse_args(argv)
    try:
        recipe = _recipe(args, defaults)
        shipped = shipped_file("reid-tiny", "synthetic")
        if not args.out and not args.check:
            raise UserError("nothing to do; pass --out FILE to write the weights, or --check to compare with the shipped file")
        out = Path(args.out) if args.out else None
        if out is not None and out.is_dir():
            raise UserError(f"--out '{out}' is a folder; pass a file name ending in .safetensors")
        if out is not None and out.suffix != ".safetensors":
            raise UserError(f"--out '{out}' must end in .safetensors (open_clip reads the format from the name)")
    except UserError as err:
        return cli_exit(err, parser.prog)
    state, summary = pretrain(recipe, log=print)
    with tempfile.TemporaryDirectory() as tmp:
        target = out or Path(tmp) / "weights.safetensors"
        save_weights(state, target, recipe)
        digest = sha256(target)
        print(
            f"pretrained {recipe.model} for {recipe.steps} steps in {summary['wall_s']:.0f} s "
            f"(clip loss {summary['losses'][0]:.3f} -> {np.mean(summary['losses'][-50:]):.3f}); sha256 {digest}"
        )
        if out is not None:
            print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
        if args.check:
            same = digest == sha256(shipped)
            print(f"{'same as' if same else 'DIFFERS from'} the shipped {shipped} (sha256 {sha256(shipped)})")
            return 0 if same else 1
    return 0


def _recipe(args, defaults: Recipe) -> Recipe:
    values = {
        "steps": args.steps,
        "identities": args.identities,
        "images_per_identity": args.images_per_identity,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "warmup_steps": args.warmup_steps,
        "seed": args.seed,
        "threads": args.threads,
    }
    for name in ("steps", "identities", "threads"):
        if values[name] < 1:
            raise UserError(f"--{name} is {values[name]}, but must be >= 1")
    if values["images_per_identity"] < 1:
        raise UserError(f"--images-per-identity is {values['images_per_identity']}, but must be >= 1")
    if not 2 <= values["batch_size"] <= values["identities"]:
        raise UserError(f"--batch-size is {values['batch_size']}, but must be in [2, --identities] (one pair per person)")
    if not (math.isfinite(values["lr"]) and values["lr"] > 0):
        raise UserError(f"--lr is {values['lr']}, but must be > 0")
    if values["warmup_steps"] < 0:
        raise UserError(f"--warmup-steps is {values['warmup_steps']}, but must be >= 0")
    return dataclasses.replace(defaults, **values)


if __name__ == "__main__":
    sys.exit(main())
