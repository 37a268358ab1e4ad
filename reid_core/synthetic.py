"""The built-in synthetic person data set: images and captions from one attribute table.

Each identity gets a fixed appearance (gender, hair, top colour, pattern and
sleeves, bottom colour and kind, shoes, carried object, body shape) and is
rendered as a small standing figure with per-image variation (position,
scale, lighting, background, noise, mirror). Captions describe the same
attributes in varied wording. Many identities share most attributes, so the
identity head has to learn fine combinations: with a good head LR CE falls
well below chance within a few hundred steps, with a tiny one it stays at
log(C).

Everything is drawn from ``numpy.random.default_rng(seed)``: the same seed
gives the same images, captions and ids in every process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

COLOURS = {
    "red": (200, 30, 30),
    "blue": (30, 60, 200),
    "green": (40, 150, 50),
    "yellow": (230, 210, 40),
    "black": (25, 25, 25),
    "white": (235, 235, 235),
    "grey": (128, 128, 128),
    "purple": (130, 50, 160),
    "orange": (240, 130, 30),
    "pink": (240, 150, 190),
    "brown": (120, 75, 40),
}
HAIR = {"black": (20, 15, 10), "brown": (100, 60, 30), "blond": (220, 190, 110), "grey": (160, 160, 160)}
SKIN = [(240, 200, 170), (200, 150, 110), (130, 90, 60)]
SHOES = {"white": (230, 230, 230), "black": (20, 20, 20), "brown": (110, 70, 35)}
PATTERNS = ("plain", "striped", "checked")
BOTTOMS = ("trousers", "shorts", "skirt")
CARRIED = ("nothing", "backpack", "handbag", "umbrella")
COLOUR_NAMES = list(COLOURS)

# First raw id; raw ids are spaced so that the contiguous remap is exercised.
RAW_ID_BASE, RAW_ID_STRIDE = 1000, 7


@dataclass(frozen=True)
class Person:
    male: bool
    skin: int
    hair: str
    top: str
    pattern: str
    long_sleeves: bool
    bottom_colour: str
    bottom: str
    shoes: str
    carried: str
    width: float  # body width factor
    height: float  # body height factor


@dataclass
class SyntheticSplit:
    images: np.ndarray  # uint8 (N, 3, H, W)
    pids: np.ndarray  # raw identity ids (N,)
    captions: list[str]  # one caption per image
    people: list[Person]  # each identity's appearance, in id order


def _person(rng: np.random.Generator) -> Person:
    male = bool(rng.integers(2))
    bottom = BOTTOMS[rng.integers(3 if not male else 2)]
    return Person(
        male=male,
        skin=int(rng.integers(len(SKIN))),
        hair=list(HAIR)[rng.integers(len(HAIR))],
        top=COLOUR_NAMES[rng.integers(len(COLOURS))],
        pattern=PATTERNS[rng.integers(len(PATTERNS))],
        long_sleeves=bool(rng.integers(2)),
        bottom_colour=COLOUR_NAMES[rng.integers(len(COLOURS))],
        bottom=bottom,
        shoes=list(SHOES)[rng.integers(len(SHOES))],
        carried=CARRIED[rng.integers(len(CARRIED))],
        width=float(rng.uniform(0.85, 1.15)),
        height=float(rng.uniform(0.9, 1.05)),
    )


def draw_people(count: int, rng: np.random.Generator) -> list[Person]:
    """``count`` identities' appearances, drawn in order from ``rng``."""
    return [_person(rng) for _ in range(count)]


def attributes(p: Person) -> tuple:
    """What a caption can tell apart: every attribute but the continuous body shape."""
    return (p.male, p.skin, p.hair, p.top, p.pattern, p.long_sleeves, p.bottom_colour, p.bottom, p.shoes, p.carried)


def _render(p: Person, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Draw one image (H, W, 3) float of ``p`` on a 64x32 canvas grid scaled to ``size``."""
    H, W = size
    # Background: a per-image random colour with a vertical gradient (street clutter stand-in).
    bg = rng.uniform(90, 170, size=3)
    grad = np.linspace(-12, 12, H)[:, None, None] * rng.uniform(-1, 1)
    img = np.broadcast_to(bg, (H, W, 3)) + grad + np.zeros((H, W, 3))

    scale = p.height * rng.uniform(0.92, 1.06)
    cx = 16 + rng.uniform(-2.5, 2.5)  # centre column on the 32-wide grid
    top = 3 + rng.uniform(-1.5, 2.5)

    def box(r0, r1, c0, c1, colour):
        rr0, rr1 = int(round((top + r0 * scale) * H / 64)), int(round((top + r1 * scale) * H / 64))
        cc0, cc1 = int(round((cx + c0) * W / 32)), int(round((cx + c1) * W / 32))
        rr0, cc0 = max(rr0, 0), max(cc0, 0)
        if rr1 > rr0 and cc1 > cc0:
            img[rr0:rr1, cc0:cc1] = colour
        return rr0, rr1, cc0, cc1

    skin = np.array(SKIN[p.skin], float)
    hair = np.array(HAIR[p.hair], float)
    topc = np.array(COLOURS[p.top], float)
    botc = np.array(COLOURS[p.bottom_colour], float)
    w = 6.5 * p.width

    box(0, 10, -3.5, 3.5, skin)  # head
    box(0, 3, -3.8, 3.8, hair)  # hair on top
    if not p.male:
        box(2, 15, -4.3, -2.8, hair)  # long hair falls to the shoulders
        box(2, 15, 2.8, 4.3, hair)
    r0, r1, c0, c1 = box(11, 32, -w, w, topc)  # torso
    if p.pattern != "plain" and r1 > r0 and c1 > c0:
        rows = np.arange(r0, r1)[:, None]
        cols = np.arange(c0, c1)[None, :]
        band = max(1, H // 32)
        if p.pattern == "striped":
            mask = (rows // band) % 2 == 0
            mask = np.broadcast_to(mask, (r1 - r0, c1 - c0))
        else:
            mask = ((rows // (2 * band)) + (cols // max(1, W // 16))) % 2 == 0
        patch = img[r0:r1, c0:c1]
        patch[mask] = patch[mask] * 0.35 + 255 * 0.1
    sleeve_end = 30 if p.long_sleeves else 18
    for side in (-1, 1):
        lo, hi = (-w - 2.2, -w) if side < 0 else (w, w + 2.2)
        box(11, 31, lo, hi, skin)  # bare arm
        box(11, sleeve_end, lo, hi, topc)  # sleeve over it
    if p.bottom == "trousers":
        box(32, 54, -w + 0.5, -0.5, botc)
        box(32, 54, 0.5, w - 0.5, botc)
    elif p.bottom == "shorts":
        box(32, 54, -w + 0.8, -0.8, skin)
        box(32, 54, 0.8, w - 0.8, skin)
        box(32, 41, -w + 0.3, w - 0.3, botc)
    else:  # skirt
        box(32, 54, -w + 1.2, -1.0, skin)
        box(32, 54, 1.0, w - 1.2, skin)
        box(32, 45, -w - 0.8, w + 0.8, botc)
    box(54, 58, -w + 0.2, -0.3, np.array(SHOES[p.shoes], float))
    box(54, 58, 0.3, w - 0.2, np.array(SHOES[p.shoes], float))
    if p.carried == "backpack":
        box(12, 28, w + 0.5, w + 4.5, np.array((60, 60, 80), float))
    elif p.carried == "handbag":
        box(27, 35, -w - 5.5, -w - 1.5, np.array((150, 40, 60), float))
    elif p.carried == "umbrella":
        box(-2, 1, -9, 3, np.array((40, 40, 120), float))  # canopy
        box(1, 30, -w - 3.5, -w - 2.5, np.array((30, 30, 30), float))  # shaft

    img = img * rng.uniform(0.9, 1.1) + rng.normal(0, 6, size=img.shape)  # lighting, sensor noise
    if rng.integers(2):
        img = img[:, ::-1]
    return np.clip(img, 0, 255)


_SUBJECT = {
    True: ("A man", "The man", "This male pedestrian", "A young man", "The guy"),
    False: ("A woman", "The woman", "This female pedestrian", "A young woman", "The lady"),
}


def _caption(p: Person, rng: np.random.Generator) -> str:
    pick = lambda options: options[rng.integers(len(options))]  # noqa: E731
    pattern = {"plain": pick(("plain", "")), "striped": "striped", "checked": pick(("checked", "plaid"))}[p.pattern]
    garment = pick(("long-sleeved top", "jacket", "sweater")) if p.long_sleeves else pick(("t-shirt", "short-sleeved shirt"))
    top = " ".join(x for x in (p.top, pattern, garment) if x)
    bottom = {"trousers": pick(("trousers", "pants", "jeans")), "shorts": "shorts", "skirt": "skirt"}[p.bottom]
    carried = {
        "nothing": pick(("carries nothing", "has empty hands", "")),
        "backpack": pick(("carries a backpack", "has a bag on the back")),
        "handbag": pick(("holds a handbag", "carries a small bag in the hand")),
        "umbrella": pick(("carries an umbrella", "is holding an umbrella")),
    }[p.carried]
    clauses = [
        f"{pick(('wears', 'is wearing', 'is dressed in'))} a {top}",
        f"{pick(('has', 'wears'))} {p.bottom_colour} {bottom}",
        f"has {p.hair} hair",
        f"{pick(('wears', 'has on'))} {p.shoes} {pick(('shoes', 'sneakers'))}",
    ]
    if carried:
        clauses.append(carried)
    order = rng.permutation(len(clauses))
    clauses = [clauses[i] for i in order]
    return f"{pick(_SUBJECT[p.male])} {', '.join(clauses[:-1])} and {clauses[-1]}."


def make_split(
    people: list[Person], raw_ids: list[int], per_identity: int, size: tuple[int, int], rng: np.random.Generator
) -> SyntheticSplit:
    n = len(people) * per_identity
    images = np.empty((n, 3, size[0], size[1]), np.uint8)
    pids = np.empty(n, np.int64)
    captions = []
    for k, (image, raw, (caption,)) in enumerate(render_people(people, raw_ids, [per_identity] * len(people), size, rng)):
        images[k] = image.transpose(2, 0, 1)
        pids[k] = raw
        captions.append(caption)
    return SyntheticSplit(images, pids, captions, list(people))


def render_people(
    people: list[Person], raw_ids: list[int], counts: list[int], size: tuple[int, int], rng: np.random.Generator, captions: int = 1
) -> Iterator[tuple[np.ndarray, int, tuple[str, ...]]]:
    """``counts[i]`` images of ``people[i]``, one at a time: ``(image (H, W, 3) uint8, raw id, captions)``.

    One image in memory at a time, so a data set of any size can be written to disk as it is drawn
    (``benchmarks/scale_data.py``: 34,054 images at 384x128 would be ~5 GB rendered at once)."""
    for person, raw, count in zip(people, raw_ids, counts):
        for _ in range(count):
            image = _render(person, size, rng).astype(np.uint8)
            yield image, raw, tuple(_caption(person, rng) for _ in range(captions))


def make_synthetic(
    identities: int = 400, per_identity: int = 8, size: tuple[int, int] = (64, 32), seed: int = 0
) -> tuple[SyntheticSplit, SyntheticSplit]:
    """``(train, test)``: ``identities`` training ids and ``identities // 4`` (at least 2) unseen test ids."""
    rng = np.random.default_rng(seed)
    test_identities = max(2, identities // 4)
    people = draw_people(identities + test_identities, rng)
    raw_ids = [RAW_ID_BASE + RAW_ID_STRIDE * i for i in range(len(people))]
    train = make_split(people[:identities], raw_ids[:identities], per_identity, size, rng)
    test = make_split(people[identities:], raw_ids[identities:], per_identity, size, rng)
    return train, test
