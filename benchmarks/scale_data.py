"""The scale fixture: a CUHK-PEDES-layout data set at the size users train on, written to disk as it is drawn.

    python benchmarks/scale_data.py OUT                    # 34,054 train JPEGs of 11,003 ids at 384x128, ~3 min here
    python benchmarks/scale_data.py OUT --fraction 0.01    # the first 1% of the identities (the slow test's slice)

CUHK-PEDES's train split is 34,054 images of 11,003 identities with two captions each, its test split
3,074 images of 1,000 identities; the fixture has those counts (1,045 training identities with 4 images,
the rest with 3, as 34,054 = 11,003 x 3 + 1,045), synthetic people (`reid_core.synthetic`, the embedded
default's renderer) at ``--size``, JPEG quality 90, under ``OUT/imgs/`` with ``OUT/reid_raw.json``: what
``--data OUT`` reads as any CUHK-PEDES folder. One image is in memory at a time (all of them rendered at
once would be ~5 GB). ``--fraction`` keeps that share of the identities of each split (at least 2 each).
The last line says what was written: images, bytes on disk and seconds.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from reid_core.config import coerce_value
from reid_core.errors import UserError, cli_exit
from reid_core.flags import ArgumentParser
from reid_core.io import write_json_atomic
from reid_core.synthetic import RAW_ID_BASE, RAW_ID_STRIDE, draw_people, render_people

# CUHK-PEDES (Li et al. 2017) as IRRA's loader reads it: (identities, images) per split
CUHK_PEDES = {"train": (11_003, 34_054), "test": (1_000, 3_074)}
CAPTIONS = 2  # per image, as CUHK-PEDES
QUALITY = 90
SEED = 27


def counts_per_identity(identities: int, images: int) -> list[int]:
    """``images`` spread over ``identities`` as evenly as whole numbers allow, the larger counts first."""
    base, extra = divmod(images, identities)
    return [base + 1] * extra + [base] * (identities - extra)


def write_scale_data(root: Path, fraction: float = 1.0, size: tuple[int, int] = (384, 128), seed: int = SEED) -> dict[str, float]:
    """Write the fixture under ``root``; returns ``{"images", "bytes", "seconds"}``."""
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    plan = {}
    for split, (identities, images) in CUHK_PEDES.items():
        counts = counts_per_identity(identities, images)
        plan[split] = counts[: max(2, round(identities * fraction))]
    people = draw_people(sum(len(c) for c in plan.values()), rng)
    records, written, first = [], 0, 0
    for split, counts in plan.items():
        folder = root / "imgs" / split
        folder.mkdir(parents=True, exist_ok=True)
        ids = [RAW_ID_BASE + RAW_ID_STRIDE * (first + i) for i in range(len(counts))]
        seen: dict[int, int] = {}
        for image, raw, captions in render_people(people[first : first + len(counts)], ids, counts, size, rng, CAPTIONS):
            k = seen[raw] = seen.get(raw, -1) + 1
            rel = f"{split}/{raw}_{k}.jpg"
            Image.fromarray(image).save(root / "imgs" / rel, quality=QUALITY)
            written += (root / "imgs" / rel).stat().st_size
            records.append({"split": split, "id": raw, "file_path": rel, "captions": list(captions)})
        first += len(counts)
    write_json_atomic(root / "reid_raw.json", records)  # last: a half-written fixture has no annotation file
    written += (root / "reid_raw.json").stat().st_size
    return {"images": len(records), "bytes": written, "seconds": time.perf_counter() - started}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = ArgumentParser(prog="python benchmarks/scale_data.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="folder to write (must not hold a data set yet)")
    parser.add_argument("--fraction", type=float, default=1.0, help="share of each split's identities to write (default 1)")
    parser.add_argument("--size", default="384x128", help="height x width of the JPEGs (default 384x128, IRRA's)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    try:
        if not 0 < args.fraction <= 1:
            raise UserError(f"--fraction is {args.fraction}, but must be in (0, 1]")
        try:
            size = coerce_value("image_size", args.size)
        except UserError:
            raise UserError(f"--size {args.size!r} must be HEIGHTxWIDTH in pixels, e.g. 384x128") from None
        if (out / "reid_raw.json").exists() or (out / "imgs").exists():
            raise UserError(f"'{out}' already holds a data set; pass a new folder")
    except UserError as err:
        return cli_exit(err, parser.prog)
    done = write_scale_data(out, args.fraction, size)
    print(
        f"wrote {done['images']:,} JPEGs at {size[0]}x{size[1]} and reid_raw.json to {out}: "
        f"{done['bytes'] / 1e9:.2f} GB in {done['seconds']:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
