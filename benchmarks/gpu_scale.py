"""The plain job at scale on one GPU: the figures a CPU cannot give (issue 27). One script, ~5 minutes of device time.

    python benchmarks/gpu_scale.py --out "$OUT"          # on the lent GPU machine (torch; no Ray, no network)
    python benchmarks/gpu_scale.py --smoke               # tiny shapes on a CPU, seconds: the script does not rot

Ray is not needed: these are plain-job figures. open_clip is needed for `reid_core.trainer.Trainer` (``reid_core.data``
and ``reid_core.model`` import it); where it is missing, wheels carried in ``gpu_wheels/`` (see BENCHMARKS.md "real
scale") are installed into a temp folder first, and where that fails too the model is a ViT-B/16-shaped image tower
in plain torch (same width, depth, heads, patch and tokens; no text tower: the CE-only phase) under the same head,
`reid_core.monitor.HeadMonitor` and head copies as `Trainer`'s; the first line says which ran. Sections:

1. step rate, ViT-B/16 at 384x128, batch 64, bf16 autocast, 11,003-identity head: with and without the monitor and
   with and without the guard's head copies (steps alternating, medians);
2. loader: 384x128 JPEGs written here, decoded, flipped and batched (`reid_core.data`'s loader, or its replica) at
   1 .. the machine's cores - 1 workers, against section 1's images/s: the workers a GPU step needs;
3. two processes sharing the GPU (what ``--gpus-per-trial 0.5`` does) against one alone: images/s each and together;
4. planted inf gradients under fp16 and a GradScaler: the monitor's ``skipped_steps`` and the diagnosis's cause;
5. an allocation larger than the card: the one line `reid_core.contract` turns a CUDA out-of-memory error into.

Everything printed is also written to ``--out``/gpu_scale.txt, the figures to gpu_scale.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
# what reid_core's Trainer imports beyond torch (pip name: module); torchvision cannot travel (it must match the torch)
WHEELS = {"open_clip_torch": "open_clip", "ftfy": "ftfy", "wcwidth": "wcwidth", "regex": "regex", "tqdm": "tqdm",
          "pyyaml": "yaml", "pillow": "PIL"}  # fmt: skip
sys.path.insert(0, str(ROOT))
LINES: list[str] = []


def say(text: str) -> None:
    LINES.append(text)
    print(text, flush=True)


def ensure_open_clip() -> bool:
    """open_clip importable, installing the carried wheels (``gpu_wheels/``) into a temp folder when it is not."""
    if importlib.util.find_spec("open_clip") is not None:
        return True
    wheels = ROOT / "gpu_wheels"
    if not wheels.is_dir():
        return False
    target = tempfile.mkdtemp(prefix="gpu-wheels-")
    missing = [pip for pip, module in WHEELS.items() if importlib.util.find_spec(module) is None]
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(wheels), "--target", target,
           "--no-deps", *missing]  # fmt: skip
    if subprocess.run(cmd, capture_output=True).returncode != 0:
        return False
    sys.path.append(target)  # after site-packages: the machine's own torch stays the one imported
    importlib.invalidate_caches()
    return importlib.util.find_spec("open_clip") is not None


# --- the model: our Trainer, or the same shapes in plain torch --------------------------------------------------


def torch_only_step(shape: dict[str, Any], device, dtype, scaler_on: bool) -> Callable[..., dict[str, Any]]:
    """A ViT-B/16-shaped image tower (pre-norm blocks, class token, projection) with the BNNeck head, fused AdamW,
    `HeadMonitor` and `Trainer.head_state`'s copies; returns ``step(monitor=True, guard=False, plant_inf=False)``."""
    import torch
    from torch import nn

    from reid_core.monitor import HeadMonitor

    h, w = shape["image_size"]
    width, patch = shape["width"], shape["patch"]

    class Tower(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, width, patch, patch, bias=False)
            self.cls = nn.Parameter(torch.zeros(1, 1, width))
            self.pos = nn.Parameter(torch.randn(1, (h // patch) * (w // patch) + 1, width) * 0.01)
            self.ln_pre, self.ln_post = nn.LayerNorm(width), nn.LayerNorm(width)
            block = nn.TransformerEncoderLayer(width, shape["heads"], 4 * width, 0.0, "gelu", batch_first=True, norm_first=True)
            self.blocks = nn.TransformerEncoder(block, shape["layers"], enable_nested_tensor=False)
            self.proj = nn.Linear(width, shape["embed"], bias=False)

        def forward(self, x):
            x = self.conv1(x).flatten(2).transpose(1, 2)
            x = torch.cat([self.cls.expand(len(x), -1, -1), x], 1) + self.pos
            return self.proj(self.ln_post(self.blocks(self.ln_pre(x))[:, 0]))

    tower = Tower().to(device)
    neck, classifier = nn.BatchNorm1d(shape["embed"]).to(device), nn.Linear(shape["embed"], shape["classes"], bias=False).to(device)
    neck.bias.requires_grad_(False)
    nn.init.normal_(classifier.weight, std=0.001)
    head_params = [neck.weight, classifier.weight]
    optimizer = torch.optim.AdamW([{"params": list(tower.parameters()), "lr": 1e-5}, {"params": head_params, "lr": 1e-2}],
                                  fused=device.type == "cuda")  # fmt: skip
    scaler = torch.amp.GradScaler(device.type, enabled=scaler_on)
    monitor = HeadMonitor(classifier, optimizer, scaler=scaler, neck=neck)
    images = torch.randn(shape["batch"], 3, h, w, device=device)
    labels = torch.randint(0, shape["classes"], (shape["batch"],), device=device)

    def head_state():  # Trainer.head_state: the head's weights, buffers and AdamW moments, cloned
        with torch.no_grad():
            modules = [{k: v.clone() for k, v in m.state_dict().items()} for m in (neck, classifier)]
            moments = [{k: v.clone() for k, v in optimizer.state.get(p, {}).items() if torch.is_tensor(v)} for p in head_params]
        return modules, moments

    def step(monitor_on: bool = True, guard: bool = False, plant_inf: bool = False) -> dict[str, Any]:
        if guard:
            head_state()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = classifier(neck(tower(images)))
            loss = nn.functional.cross_entropy(logits, labels)
        scaler.scale(loss).backward()
        if plant_inf:
            classifier.weight.grad.fill_(float("inf"))
        scaler.unscale_(optimizer)
        if monitor_on:
            monitor.after_backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        out = monitor.after_step() if monitor_on else {}
        return {"step": monitor.steps, "ce": loss.item(), "num_classes": shape["classes"], **out}

    return step


def trainer_step(shape: dict[str, Any], device, amp: str) -> Callable[..., dict[str, Any]]:
    """Our `Trainer` at ``shape`` (random init, a few synthetic identities in memory, ``num_classes`` the head's), the
    CE-only phase held (``sdm=True``: the CE+SDM phase); ``step(monitor_on, guard, plant_inf, sdm)`` as above."""
    import dataclasses

    from reid_core.config import TrainConfig
    from reid_core.head_lr import HeadLRChanges
    from reid_core.trainer import HEAD_METRICS, Trainer

    cfg = TrainConfig(
        model=shape["model"], pretrained=None, image_size=shape["image_size"], num_classes=shape["classes"],
        synthetic_identities=8, synthetic_images_per_identity=max(2, shape["batch"] // 8), batch_size=shape["batch"],
        device=device.type, amp=amp, threads=0, ce_only_steps=10**6, sdm_ramp_steps=0, eval_every=0,
    )  # fmt: skip
    trainer = Trainer(cfg)
    monitor = trainer.monitor
    real = {n: getattr(monitor, n) for n in ("observe", "after_backward", "after_step")}
    constants = {k: 0.0 for k in ("head_lr_applied", *HEAD_METRICS)}
    stubs = {"observe": lambda *a, **k: None, "after_backward": lambda: {}, "after_step": lambda: constants}
    judges = {False: HeadLRChanges(cfg), True: HeadLRChanges(dataclasses.replace(cfg, head_guard=True))}
    planted = {"on": False}
    trainer.model.classifier.weight.register_hook(lambda g: g.fill_(float("inf")) if planted["on"] else g)

    def step(monitor_on: bool = True, guard: bool = False, plant_inf: bool = False, sdm: bool = False) -> dict[str, Any]:
        for name, method in (real if monitor_on else stubs).items():
            setattr(monitor, name, method)
        trainer.head_lr_changes = judges[guard]
        planted["on"] = plant_inf
        trainer.sdm_start_step = 0 if sdm else None  # sdm: the SDM phase (text tower run and trained); else CE only
        return trainer.train_step()

    return step


def build(shape: dict[str, Any], device, amp: str, torch_only: bool) -> Callable[..., dict[str, Any]]:
    import torch

    if torch_only:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp) if device.type == "cuda" else None
        return torch_only_step(shape, device, dtype, scaler_on=amp == "fp16")
    return trainer_step(shape, device, amp)


def timed(step: Callable[..., Any], n: int, sync: Callable[[], None], **kwargs: Any) -> float:
    times = []  # seconds of each of ``n`` steps with ``kwargs``: their median
    for _ in range(n):
        sync()
        t = time.perf_counter()
        step(**kwargs)
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


# --- the sections ---------------------------------------------------------------------------------------------------


def step_rates(shape, device, torch_only: bool, n: int, sync) -> dict[str, float]:
    step = build(shape, device, "bf16", torch_only)
    for _ in range(max(3, n // 3)):  # warm-up: cuDNN/cuBLAS choices, the allocator, fused AdamW's state
        step()
    kinds = {"bare": dict(monitor_on=False), "monitor": dict(monitor_on=True), "guard": dict(monitor_on=False, guard=True),
             "both": dict(monitor_on=True, guard=True)}  # fmt: skip
    seconds = {k: [] for k in kinds}
    for _ in range(3):  # rounds, so that drift hits every kind alike
        for name, kwargs in kinds.items():
            seconds[name].append(timed(step, n, sync, **kwargs))
    s = {k: statistics.median(v) for k, v in seconds.items()}
    out = {f"{k}_s": v for k, v in s.items()}
    out.update(images_per_s=shape["batch"] / s["both"], monitor_share=s["monitor"] / s["bare"] - 1, guard_share=s["guard"] / s["bare"] - 1)
    say(
        f"1. step, CE-only, batch {shape['batch']}: {1000 * s['bare']:.1f} ms bare, +monitor {out['monitor_share']:+.2%}, "
        f"+guard {out['guard_share']:+.2%}, both {1000 * s['both']:.1f} ms ({out['images_per_s']:.0f} images/s)"
    )
    if not torch_only:
        out["sdm_s"] = timed(step, n, sync, sdm=True)
        out["sdm_images_per_s"] = shape["batch"] / out["sdm_s"]
        say(f"   step, CE+SDM (text tower too): {1000 * out['sdm_s']:.1f} ms ({out['sdm_images_per_s']:.0f} images/s)")
    return out


def loader_rates(shape, device, torch_only: bool, need: float, workers: list[int], smoke: bool) -> dict[str, Any]:
    import itertools

    import torch

    folder = Path(tempfile.mkdtemp(prefix="gpu-jpegs-"))
    t = time.perf_counter()
    count = write_jpegs(folder, 24 if smoke else 720, tuple(shape["image_size"]))
    say(f"2. loader: {count} JPEGs at {shape['image_size'][0]}x{shape['image_size'][1]} written in {time.perf_counter() - t:.0f} s")
    rates = {}
    for w in workers:
        if torch_only:
            from PIL import Image

            paths = sorted(str(p) for p in (folder / "imgs" / "train").glob("*.jpg"))

            def read(i: int):
                with Image.open(paths[i % len(paths)]) as im:  # as reid_core.data.read_image, then the flip
                    return torch.from_numpy(__import__("numpy").asarray(im.convert("RGB")).copy()).permute(2, 0, 1).flip(-1)

            loader = torch.utils.data.DataLoader(range(10**9), batch_size=shape["batch"], num_workers=w, collate_fn=lambda ix: torch.stack([read(i) for i in ix]),
                                                 pin_memory=device.type == "cuda", prefetch_factor=4 if w else None)  # fmt: skip
            stream = (b.to(device, non_blocking=True) for b in loader)
        else:
            from reid_core.config import TrainConfig
            from reid_core.data import batches, load_data
            from reid_core.model import context_length

            cfg = TrainConfig(data=str(folder), model=shape["model"], image_size=shape["image_size"], batch_size=shape["batch"])
            stream = batches(load_data(cfg, context_length(cfg)), shape["batch"], 0, device, w)
        for _ in range(2):
            next(stream)
        n = 3 if smoke else 30
        t = time.perf_counter()
        for _ in itertools.islice(stream, n):
            pass
        rates[w] = n * shape["batch"] / (time.perf_counter() - t)
        stream.close()
    per_worker = max(r / w for w, r in rates.items() if w)
    needed = -(-need // per_worker)
    say("   " + ", ".join(f"{w} worker(s) {r:.0f}" for w, r in rates.items()) + f" images/s; the step needs {need:.0f}: "
        f"{needed:.0f} worker(s) at {per_worker:.0f} per worker")  # fmt: skip
    return {"loader_images_per_s": rates, "per_worker": per_worker, "workers_needed": needed}


def write_jpegs(root: Path, identities: int, size: tuple[int, int]) -> int:
    """A CUHK-PEDES-layout folder as ``benchmarks/scale_data.py`` writes it (4 images of each identity in train, 4 of
    ``identities // 10`` in test), without its imports (pyyaml may be missing here): PIL and numpy only."""
    import numpy as np
    from PIL import Image

    from reid_core.synthetic import draw_people, render_people

    rng = np.random.default_rng(27)
    records, people = [], draw_people(identities + max(2, identities // 10), rng)
    for split, group in (("train", people[:identities]), ("test", people[identities:])):
        (root / "imgs" / split).mkdir(parents=True, exist_ok=True)
        ids = [1000 + 7 * (i + (0 if split == "train" else identities)) for i in range(len(group))]
        for k, (image, raw, captions) in enumerate(render_people(group, ids, [4] * len(group), size, rng, 2)):
            rel = f"{split}/{raw}_{k}.jpg"
            Image.fromarray(image).save(root / "imgs" / rel, quality=90)
            records.append({"split": split, "id": raw, "file_path": rel, "captions": list(captions)})
    (root / "reid_raw.json").write_text(json.dumps(records))
    return len(records)


def child(args) -> None:
    """One process of section 3: train ``--seconds`` and print its images/s."""
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shape = SMOKE if args.smoke else SCALE
    step = build(shape, device, "bf16", args.torch_only)
    for _ in range(3):
        step()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t, n = time.perf_counter(), 0
    while time.perf_counter() - t < args.seconds:
        step()
        n += 1
    sync()
    print(json.dumps({"images_per_s": n * shape["batch"] / (time.perf_counter() - t)}))


def sharing(args) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", "--seconds", str(args.seconds)] + (["--smoke"] if args.smoke else []) + (["--torch-only"] if args.torch_only else [])

    def run(k: int) -> list[float]:
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(k)]
        return [json.loads(p.communicate()[0].strip().splitlines()[-1])["images_per_s"] for p in procs]

    alone, two = run(1), run(2)
    say(f"3. one process alone {alone[0]:.0f} images/s; two sharing the GPU {two[0]:.0f} + {two[1]:.0f} = {sum(two):.0f} ({sum(two) / alone[0]:.2f}x)")
    return {"alone": alone[0], "shared": two}


def planted_inf(shape, device, torch_only: bool) -> dict[str, Any]:
    from reid_core.contract import Reporter
    from reid_core.diagnostics import diagnose

    step = build(shape, device, "fp16", torch_only)
    rows: list[dict[str, Any]] = []
    reporter = Reporter(lambda m, s: rows.append(m))
    for k in range(1, 31):
        metrics = step(plant_inf=True)
        reporter({**metrics, "step": k, "samples": k * shape["batch"]})
    found = diagnose(rows, head_lr=1e-2)
    last = rows[-1]
    say(f"4. planted inf gradients, fp16: skipped_steps {last.get('skipped_steps')} of 30, loss scale {last.get('loss_scale')}; diagnosis: {found.cause} ({found.evidence})")
    return {"skipped_steps": last.get("skipped_steps"), "cause": found.cause}


def out_of_memory(device) -> str:
    import torch

    from reid_core.contract import OutOfMemory, Reporter, call

    def greedy(config, report):
        report({"step": 1, "samples": 64, "ce": 9.3, "num_classes": 11003})
        total = torch.cuda.get_device_properties(0).total_memory if device.type == "cuda" else 2**50
        torch.empty(2 * total, dtype=torch.uint8, device=device)

    try:
        call(greedy, {"batch_size": 64, "grad_accum_steps": 1}, Reporter(lambda m, s: None))
    except OutOfMemory as err:
        say(f"5. {err}")
        return str(err)
    return "no error"


SCALE = {"model": "ViT-B-16", "image_size": [384, 128], "classes": 11003, "batch": 64, "width": 768, "layers": 12, "heads": 12, "patch": 16, "embed": 512}
SMOKE = {"model": "reid-tiny", "image_size": [64, 32], "classes": 50, "batch": 8, "width": 64, "layers": 2, "heads": 2, "patch": 8, "embed": 128}


def main() -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/gpu_scale.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None, help="folder for gpu_scale.txt and gpu_scale.json (default: print only)")
    p.add_argument("--smoke", action="store_true", help="tiny shapes, seconds, any device")
    p.add_argument("--torch-only", action="store_true", help="the plain-torch model even where open_clip is there")
    p.add_argument("--steps", type=int, default=15, help="timed steps per kind and round in section 1")
    p.add_argument("--seconds", type=float, default=20, help="seconds each process of section 3 trains")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.torch_only = args.torch_only or not ensure_open_clip()
    if args.child:
        child(args)
        return 0
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shape = SMOKE if args.smoke else SCALE
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    card = torch.cuda.get_device_name() if device.type == "cuda" else "no GPU"
    say(f"gpu_scale on {card}, {os.cpu_count()} CPUs, torch {torch.__version__}; model: "
        + ("a ViT-B/16-shaped tower in plain torch (--torch-only, or open_clip not importable)" if args.torch_only else "reid_core's Trainer (open_clip)"))  # fmt: skip
    started = time.perf_counter()
    figures: dict[str, Any] = {"card": card, "cpus": os.cpu_count(), "torch_only": args.torch_only}
    cpus = os.cpu_count() or 2
    workers = [0, 1] if args.smoke else sorted({1, 2, 4, 8, max(1, cpus - 1)})
    sections = {
        "step": lambda: step_rates(shape, device, args.torch_only, 2 if args.smoke else args.steps, sync),
        "loader": lambda: loader_rates(shape, device, args.torch_only, figures.get("step", {}).get("images_per_s", 1000.0), workers, args.smoke),
        "sharing": lambda: sharing(args),
        "planted_inf": lambda: planted_inf(shape, device, args.torch_only),
        "out_of_memory": lambda: out_of_memory(device),
    }  # fmt: skip
    for number, (name, section) in enumerate(sections.items(), start=1):
        try:  # device time is scarce: one section's failure costs only its own figures
            figures[name] = section()
        except Exception as err:  # noqa: BLE001
            say(f"{number}. {name} failed: {type(err).__name__}: {(str(err).splitlines() or [''])[0][:300]}")
    say(f"done in {time.perf_counter() - started:.0f} s")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "gpu_scale.txt").write_text("\n".join(LINES) + "\n")
        (Path(args.out) / "gpu_scale.json").write_text(json.dumps(figures, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
