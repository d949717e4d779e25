"""What the demo pictures look like: visual traits per rank (see :mod:`amanita.demo`) and the drawing."""
from __future__ import annotations

import colorsys
import functools
import io
import math
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image, ImageChops, ImageDraw

from amanita.demo.taxonomy import OPEN_SET_SPECIES, SPECIES, Taxon
from amanita.taxonomy import RANKS

DEFAULT_IMAGE_SIZE = 300  # shorter side in pixels, the "300p" of the folder name
JPEG_QUALITY = 90


_BACKGROUNDS = {  # phylum: background colour
    "Ascomycota": (96, 70, 44), "Basidiomycota": (42, 74, 44), "Chytridiomycota": (36, 82, 96),
    "Mucoromycota": (84, 84, 98), "Zoopagomycota": (86, 52, 92)}
_GROUND_COLORS = ((60, 110, 40), (120, 78, 40), (150, 130, 90), (40, 60, 30), (105, 105, 110),
                  (150, 60, 40), (70, 50, 30), (180, 160, 60), (45, 45, 60), (120, 150, 110))
_GROUND_STYLES = ("moss", "litter", "grain", "grass", "gravel")
_PLANS = {  # order: (body plan, stem/host colour, base hue of its families)
    "Agaricales": ("cap", (236, 226, 205), 0.02),
    "Boletales": ("bolete", (214, 190, 140), 0.08),
    "Russulales": ("flatcap", (246, 244, 236), 0.95),
    "Cantharellales": ("funnel", (240, 200, 120), 0.11),
    "Polyporales": ("bracket", (92, 70, 52), 0.07),
    "Auriculariales": ("ear", (110, 85, 60), 0.03),
    "Phallales": ("phallus", (245, 240, 225), 0.25),
    "Geastrales": ("star", (200, 170, 130), 0.08),
    "Tremellales": ("jelly", (120, 95, 70), 0.14),
    "Dacrymycetales": ("antler", (130, 100, 70), 0.12),
    "Pezizales": ("cup", (225, 205, 170), 0.0),
    "Helotiales": ("discs", (120, 95, 70), 0.47),
    "Rhytismatales": ("leafspots", (120, 170, 60), 0.0),
    "Xylariales": ("knobs", (115, 90, 65), 0.0),
    "Hypocreales": ("club", (230, 200, 150), 0.06),
    "Teloschistales": ("rosette", (150, 145, 135), 0.12),
    "Mucorales": ("pins", (235, 235, 230), 0.6),
    "Entomophthorales": ("fly", (50, 45, 40), 0.13),
    "Synchytriales": ("galls", (110, 160, 70), 0.08),
}
_PATTERNS = ("spots", "radial", "rings", "scales", "net", "speckle", "rim", "blotches")
_PATTERN_COLORS = ((250, 250, 244), (38, 28, 22), (250, 225, 110), (120, 24, 30))
_MARK_COLORS = ((230, 30, 30), (30, 60, 230), (250, 250, 250), (20, 20, 20), (250, 200, 0),
                (160, 40, 200), (0, 190, 190))
_DENSITIES = (0.6, 1.0, 1.6)
_ELEMENT_SIZES = (0.8, 1.0, 1.3)


@dataclass(frozen=True)
class Traits:
    """What a species looks like; each field is set by one rank (see the module docstring)."""

    background: tuple[int, int, int]  # phylum
    ground: tuple[int, int, int]  # class
    ground_style: str  # class
    plan: str  # order
    secondary: tuple[int, int, int]  # order: stem, host or substrate object
    body: tuple[int, int, int]  # family hue, species shade
    hue: float  # family
    pattern: str  # genus
    pattern_color: tuple[int, int, int]  # genus
    density: float  # species
    element_size: float  # species
    mark: tuple[int, int, int]  # species


@functools.lru_cache(maxsize=None)
def _siblings() -> dict[tuple[str, str], tuple[int, int]]:
    """(rank, name) → (index among the children of its parent, number of those children)."""
    out = {}
    lineages = sorted({tuple(t.lineage.values()) for t in SPECIES})
    for i, rank in enumerate(RANKS):
        children: dict[tuple, list[str]] = {}
        for lin in lineages:
            names = children.setdefault(lin[:i], [])
            if lin[i] not in names:
                names.append(lin[i])
        for names in children.values():
            out.update({(rank, n): (j, len(names)) for j, n in enumerate(names)})
    return out


def _rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    """8-bit RGB of an HSV colour (hue wraps around)."""
    return tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(h % 1.0, s, v))


@functools.lru_cache(maxsize=None)
def species_traits(species: str) -> Traits:
    """The visual traits of an accepted ``species`` name, derived from its lineage only."""
    taxon = next((t for t in SPECIES + OPEN_SET_SPECIES if t.species == species), None)
    if taxon is None:
        raise KeyError(f"unknown demo species {species!r}")
    sib = dict(_siblings())
    if ("species", species) not in sib:  # a held-out species: the next sibling in its genus
        n = sum(t.genus == taxon.genus for t in SPECIES if t.species == t.scientific_name)
        sib[("species", species)] = (n, n + 1)
    lin = taxon.lineage
    n_class = sorted({t.class_name for t in SPECIES}).index(taxon.class_name)
    plan, secondary, base_hue = _PLANS[taxon.order]
    fam, n_fam = sib[("family", lin["family"])]
    gen, _ = sib[("genus", lin["genus"])]
    sp, n_sp = sib[("species", lin["species"])]
    hue = base_hue + fam / n_fam
    shade = sp / (n_sp - 1) if n_sp > 1 else 0.5  # siblings spread from light to dark
    return Traits(
        background=_BACKGROUNDS[taxon.phylum],
        ground=_GROUND_COLORS[n_class % len(_GROUND_COLORS)],
        ground_style=_GROUND_STYLES[n_class % len(_GROUND_STYLES)],
        plan=plan, secondary=secondary,
        body=_rgb(hue + 0.06 * (shade - 0.5), 0.55 + 0.4 * shade, 0.95 - 0.5 * shade), hue=hue % 1.0,
        pattern=_PATTERNS[(gen + 3 * fam + 5) % len(_PATTERNS)],  # +5: Amanita gets spots (warts)
        pattern_color=_PATTERN_COLORS[(gen + fam) % len(_PATTERN_COLORS)],
        density=_DENSITIES[sp % 3], element_size=_ELEMENT_SIZES[(sp // 3) % 3],
        mark=_MARK_COLORS[sp % len(_MARK_COLORS)])


_COLOUR_NAMES = ("red", "orange", "yellow", "olive", "green", "green", "teal", "blue", "blue",
                 "violet", "purple", "pink")  # by twelfths of the hue circle
_PATTERN_WORDS = {"spots": "spots", "radial": "radial stripes", "rings": "concentric zones",
                  "scales": "scales", "net": "a net pattern", "speckle": "fine speckles",
                  "rim": "a contrasting margin", "blotches": "large blotches"}
_PLAN_WORDS = {
    "cap": "a mushroom with a convex cap and slender stem", "bolete": "a bolete with a bun-shaped cap",
    "flatcap": "a mushroom with a flat, depressed cap", "funnel": "a funnel-shaped fruit body",
    "bracket": "bracket fungi on a trunk", "ear": "an ear-shaped jelly fungus",
    "phallus": "a stinkhorn rising from an egg", "star": "an earthstar",
    "jelly": "a lobed jelly fungus", "antler": "branched antler-like fruit bodies",
    "cup": "a cup fungus", "discs": "tiny discs on wood", "leafspots": "tar spots on a leaf",
    "knobs": "rounded knobs on wood", "club": "club-shaped fruit bodies",
    "rosette": "a lichen rosette", "pins": "a pin mould", "fly": "an insect killed by a fungus",
    "galls": "warty galls on a host plant"}


def caption(t: Taxon, substrate: str) -> str:
    """A short description of what the picture shows, in the spirit of FungiTastic's captions."""
    tr = species_traits(t.species)
    h, _, v = colorsys.rgb_to_hsv(*(c / 255 for c in tr.body))
    colour = ("pale " if v > 0.8 else "dark " if v < 0.6 else "") + _COLOUR_NAMES[int(h * 12) % 12]
    return (f"The image shows {_PLAN_WORDS[tr.plan]}, {colour} with {_PATTERN_WORDS[tr.pattern]}, "
            f"growing on {substrate}.")

# ---------------------------------------------------------------------- drawing
def _shade(c: tuple[int, int, int], f: float) -> tuple[int, int, int]:
    """``c`` scaled by ``f`` (darker below 1, lighter above), clipped to 0..255."""
    return tuple(int(min(255, max(0, round(v * f)))) for v in c)


class _Layer:
    """A square RGBA drawing of one fruit body in unit coordinates, plus its surface mask.

    The surface (cap, cup, shelves, ...) is where the genus pattern goes: shapes drawn with
    ``surface=True`` also go into ``mask``.
    """

    def __init__(self, size: int):
        self.s = size
        self.img = Image.new("RGBA", (size, size), (0, 0, 0, 0))
        self.mask = Image.new("L", (size, size), 0)
        self.draw, self.mdraw = ImageDraw.Draw(self.img), ImageDraw.Draw(self.mask)

    def px(self, xy) -> list[float]:
        return [v * self.s for v in xy]

    def shape(self, kind: str, xy, fill, surface: bool = False, outline: float = 0.0, **kw) -> None:
        """Draw ``kind`` (an ImageDraw method name) at unit coordinates ``xy``."""
        width = max(1, round(outline * self.s)) if outline else 0
        line = _shade(fill, 0.6) if width else None
        if kind == "line":
            getattr(self.draw, kind)(self.px(xy), fill=fill, **kw)
        else:
            getattr(self.draw, kind)(self.px(xy), fill=fill, outline=line, width=width, **kw)
        if surface:
            getattr(self.mdraw, kind)(self.px(xy), fill=255, **kw)


def _plan_cap(L: _Layer, t: Traits, rng) -> tuple[float, float]:
    """Agaricales: convex cap on a slender stem, gills beneath; returns the mark's anchor."""
    w = 0.07 * rng.uniform(0.85, 1.15)
    L.shape("rectangle", [0.5 - w, 0.42, 0.5 + w, 0.93], t.secondary)
    L.shape("ellipse", [0.5 - 1.7 * w, 0.86, 0.5 + 1.7 * w, 0.97], t.secondary)
    L.shape("chord", [0.14, 0.38, 0.86, 0.54], _shade(t.secondary, 0.7), start=0, end=180)
    L.shape("pieslice", [0.12, 0.16, 0.88, 0.74], t.body, surface=True, outline=0.012,
            start=180, end=360)
    return 0.5, 0.62


def _plan_bolete(L: _Layer, t: Traits, rng) -> tuple[float, float]:
    """Boletales: thick bun-shaped cap, pores beneath, fat club-shaped stem."""
    L.shape("polygon", [0.39, 0.5, 0.61, 0.5, 0.69, 0.9, 0.31, 0.9], t.secondary)
    L.shape("ellipse", [0.28, 0.8, 0.72, 0.97], t.secondary)
    L.shape("chord", [0.1, 0.42, 0.9, 0.56], (225, 205, 90), start=0, end=180)
    L.shape("pieslice", [0.08, 0.12, 0.92, 0.86], t.body, surface=True, outline=0.012,
            start=180, end=360)
    return 0.5, 0.72


def _plan_flatcap(L: _Layer, t: Traits, rng) -> tuple[float, float]:
    """Russulales: flat cap with a depressed centre on a short, stout white stem."""
    L.shape("rectangle", [0.39, 0.45, 0.61, 0.93], t.secondary)
    L.shape("ellipse", [0.08, 0.3, 0.92, 0.56], t.body, surface=True, outline=0.012)
    L.shape("ellipse", [0.36, 0.38, 0.64, 0.47], _shade(t.body, 0.75))
    return 0.5, 0.75


def _plan_funnel(L: _Layer, t: Traits, rng) -> tuple[float, float]:
    """Cantharellales: a trumpet narrowing into the stem, ridges on the outside."""
    L.shape("polygon", [0.44, 0.95, 0.56, 0.95, 0.6, 0.62, 0.88, 0.3, 0.12, 0.3, 0.4, 0.62],
            t.secondary)
    for x in (0.22, 0.34, 0.46, 0.58, 0.7):
        L.shape("line", [x + 0.03, 0.34, 0.5, 0.9], _shade(t.secondary, 0.75), width=max(1, L.s // 90))
    L.shape("ellipse", [0.1, 0.2, 0.9, 0.4], t.body, surface=True, outline=0.012)
    return 0.5, 0.86


def _plan_bracket(L: _Layer, t: Traits, rng) -> tuple[float, float]:
    """Polyporales: stacked semicircular shelves on a tree trunk."""
    L.shape("rectangle", [0.0, 0.0, 0.24, 1.0], t.secondary)
    for x in (0.05, 0.12, 0.19):
        L.shape("line", [x, 0.0, x, 1.0], _shade(t.secondary, 0.7), width=max(1, L.s // 80))
    for y, r in ((0.28, 0.62), (0.55, 0.55), (0.8, 0.42)):
        L.shape("pieslice", [0.24 - r, y - 0.45 * r, 0.24 + r, y + 0.2 * r], t.body, surface=True,
                outline=0.01, start=270, end=90)
    return 0.12, 0.92


def _plan_ear(L: _Layer, t: Traits, rng) -> tuple[float, float]:
    """Auriculariales: an ear-shaped gelatinous cup on a branch."""
    L.shape("rectangle", [0.0, 0.8, 1.0, 0.97], t.secondary)
    L.shape("ellipse", [0.18, 0.18, 0.82, 0.84], t.body, surface=True, outline=0.015)
    L.shape("ellipse", [0.33, 0.3, 0.7, 0.72], _shade(t.body, 0.7))
    return 0.15, 0.88


def _plan_phallus(L: _Layer, t: Traits, rng) -> tuple[float, float]:
    """Phallales: a tall white stem from an egg, topped by a conical head."""
    L.shape("ellipse", [0.34, 0.8, 0.66, 0.98], _shade(t.secondary, 0.85))
    L.shape("rectangle", [0.43, 0.3, 0.57, 0.88], t.secondary)
    L.shape("ellipse", [0.34, 0.06, 0.66, 0.44], t.body, surface=True, outline=0.012)
    return 0.5, 0.9


def _plan_star(L: _Layer, t: Traits, rng) -> tuple[float, float]:
    """Geastrales: a spore sac sitting on a star of rays."""
    n, cx, cy = 7, 0.5, 0.68
    pts = []
    for k in range(2 * n):
        r, a = (0.46 if k % 2 == 0 else 0.16), math.pi * k / n
        pts += [cx + r * math.cos(a), cy + 0.55 * r * math.sin(a)]
    L.shape("polygon", pts, t.body, surface=True, outline=0.01)
    L.shape("ellipse", [0.34, 0.36, 0.66, 0.7], t.secondary)
    return 0.5, 0.4


def _plan_jelly(L: _Layer, t: Traits, rng) -> tuple[float, float]:
    """Tremellales: a cluster of brain-like lobes on a branch."""
    L.shape("rectangle", [0.0, 0.82, 1.0, 0.97], t.secondary)
    for _ in range(7):
        x, y, r = rng.uniform(0.3, 0.7), rng.uniform(0.35, 0.65), rng.uniform(0.12, 0.18)
        L.shape("ellipse", [x - r, y - r, x + r, y + r], t.body, surface=True, outline=0.01)
    return 0.12, 0.9


def _plan_antler(L: _Layer, t: Traits, rng) -> tuple[float, float]:
    """Dacrymycetales: forked, antler-like sticks rising from wood."""
    L.shape("rectangle", [0.0, 0.82, 1.0, 0.97], t.secondary)
    w = max(2, round(0.055 * L.s))
    for x in np.linspace(0.22, 0.78, 4) + rng.uniform(-0.04, 0.04, 4):
        top = rng.uniform(0.12, 0.3)
        fork = (x, (top + 0.84) / 2)
        for seg in ([x, 0.84, *fork], [*fork, x - 0.1, top], [*fork, x + 0.1, top + 0.05]):
            L.shape("line", seg, t.body, surface=True, width=w)
    return 0.88, 0.9


def _plan_cup(L: _Layer, t: Traits, rng) -> tuple[float, float]:
    """Pezizales: a cup seen from the side, its coloured inside showing."""
    L.shape("pieslice", [0.1, 0.15, 0.9, 0.95], t.secondary, start=0, end=180)
    L.shape("ellipse", [0.12, 0.35, 0.88, 0.75], t.body, surface=True, outline=0.012)
    return 0.5, 0.86


def _plan_discs(L: _Layer, t: Traits, rng) -> tuple[float, float]:
    """Helotiales: a crowd of small discs on a twig."""
    L.shape("rectangle", [0.0, 0.55, 1.0, 0.8], t.secondary)
    for _ in range(12):
        x, y, r = rng.uniform(0.12, 0.88), rng.uniform(0.4, 0.7), rng.uniform(0.07, 0.11)
        L.shape("ellipse", [x - r, y - 0.6 * r, x + r, y + 0.6 * r], t.body, surface=True, outline=0.008)
    return 0.5, 0.75


def _plan_leafspots(L: _Layer, t: Traits, rng) -> tuple[float, float]:
    """Rhytismatales: large tar spots on a leaf."""
    L.shape("ellipse", [0.05, 0.12, 0.95, 0.92], t.secondary)
    L.shape("line", [0.08, 0.52, 0.92, 0.52], _shade(t.secondary, 0.7), width=max(1, L.s // 70))
    for _ in range(6):
        x, y, r = rng.uniform(0.25, 0.75), rng.uniform(0.3, 0.74), rng.uniform(0.08, 0.12)
        L.shape("ellipse", [x - r, y - r, x + r, y + r], t.body, surface=True, outline=0.008)
    return 0.12, 0.52


def _plan_knobs(L: _Layer, t: Traits, rng) -> tuple[float, float]:
    """Xylariales: hard rounded knobs on a log."""
    L.shape("rectangle", [0.0, 0.62, 1.0, 0.88], t.secondary)
    for x in np.linspace(0.2, 0.8, 4) + rng.uniform(-0.04, 0.04, 4):
        r = rng.uniform(0.11, 0.15)
        L.shape("pieslice", [x - r, 0.64 - r, x + r, 0.64 + r], t.body, surface=True,
                outline=0.01, start=180, end=360)
    return 0.5, 0.8


def _plan_club(L: _Layer, t: Traits, rng) -> tuple[float, float]:
    """Hypocreales: upright clubs on stalks."""
    w = max(2, round(0.05 * L.s))
    for x in (0.33, 0.55, 0.72):
        top = rng.uniform(0.1, 0.3)
        L.shape("line", [x, 0.95, x, top + 0.25], t.secondary, width=w)
        L.shape("ellipse", [x - 0.08, top, x + 0.08, top + 0.32], t.body, surface=True, outline=0.01)
    return 0.5, 0.92


def _plan_rosette(L: _Layer, t: Traits, rng) -> tuple[float, float]:
    """Teloschistales: a lichen rosette of lobes on bark."""
    L.shape("ellipse", [0.04, 0.08, 0.96, 0.96], t.secondary)
    for k in range(12):
        a = 2 * math.pi * k / 12
        x, y = 0.5 + 0.27 * math.cos(a), 0.52 + 0.27 * math.sin(a)
        L.shape("ellipse", [x - 0.1, y - 0.1, x + 0.1, y + 0.1], t.body, surface=True, outline=0.008)
    L.shape("ellipse", [0.3, 0.32, 0.7, 0.72], t.body, surface=True)
    return 0.5, 0.9


def _plan_pins(L: _Layer, t: Traits, rng) -> tuple[float, float]:
    """Mucorales: a pin mould, thin stalks each carrying a ball."""
    L.shape("ellipse", [0.2, 0.84, 0.8, 0.98], _shade(t.secondary, 0.6))
    w = max(1, round(0.014 * L.s))
    for _ in range(14):
        x0, x1, y1 = rng.uniform(0.3, 0.7), rng.uniform(0.1, 0.9), rng.uniform(0.12, 0.6)
        L.shape("line", [x0, 0.9, x1, y1], t.secondary, width=w)
        r = rng.uniform(0.04, 0.06)
        L.shape("ellipse", [x1 - r, y1 - r, x1 + r, y1 + r], t.body, surface=True)
    return 0.5, 0.9


def _plan_fly(L: _Layer, t: Traits, rng) -> tuple[float, float]:
    """Entomophthorales: a dead fly, its abdomen banded with fungus."""
    for x0 in (0.14, 0.5):
        L.shape("ellipse", [x0, 0.18, x0 + 0.36, 0.5], (215, 220, 225))
    w = max(1, round(0.015 * L.s))
    for dx in (-0.16, 0.16):
        for y in (0.45, 0.55):
            L.shape("line", [0.5, y, 0.5 + 1.6 * dx, y + 0.2], t.secondary, width=w)
    L.shape("ellipse", [0.3, 0.48, 0.7, 0.95], t.body, surface=True, outline=0.012)
    L.shape("ellipse", [0.39, 0.34, 0.61, 0.54], t.secondary)
    L.shape("ellipse", [0.42, 0.24, 0.58, 0.38], t.secondary)
    return 0.5, 0.44


def _plan_galls(L: _Layer, t: Traits, rng) -> tuple[float, float]:
    """Synchytriales: clusters of warty galls on a host plant."""
    L.shape("polygon", [0.5, 0.05, 0.92, 0.5, 0.5, 0.97, 0.08, 0.5], t.secondary)
    for _ in range(16):
        x, y, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.75), rng.uniform(0.04, 0.07)
        L.shape("ellipse", [x - r, y - r, x + r, y + r], t.body, surface=True, outline=0.008)
    return 0.5, 0.15


_PLAN_DRAW = {"cap": _plan_cap, "bolete": _plan_bolete, "flatcap": _plan_flatcap,
              "funnel": _plan_funnel, "bracket": _plan_bracket, "ear": _plan_ear,
              "phallus": _plan_phallus, "star": _plan_star, "jelly": _plan_jelly,
              "antler": _plan_antler, "cup": _plan_cup, "discs": _plan_discs,
              "leafspots": _plan_leafspots, "knobs": _plan_knobs, "club": _plan_club,
              "rosette": _plan_rosette, "pins": _plan_pins, "fly": _plan_fly, "galls": _plan_galls}


def _pattern_elements(d: ImageDraw.ImageDraw, box, t: Traits, s: int, rng) -> None:
    """Draw the genus pattern over ``box`` (pixels); it is clipped to the surface afterwards."""
    x0, y0, x1, y1 = box
    w, h, c, k = x1 - x0, y1 - y0, t.pattern_color, t.density
    size = t.element_size * s
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if t.pattern in ("spots", "speckle", "blotches"):
        n, r = {"spots": (12, 0.032), "speckle": (70, 0.011), "blotches": (3, 0.09)}[t.pattern]
        for _ in range(max(1, round(n * k))):
            x, y = rng.uniform(x0, x1), rng.uniform(y0, y1)
            rr = r * size * rng.uniform(0.8, 1.2)
            d.ellipse([x - rr, y - rr * 0.85, x + rr, y + rr * 0.85], fill=c)
    elif t.pattern == "radial":
        for a in np.linspace(math.pi, 2 * math.pi, max(3, round(12 * k))):
            d.line([cx, y1, cx + w * math.cos(a), y1 + 2 * h * math.sin(a)], fill=c,
                   width=max(1, round(0.018 * size)))
    elif t.pattern == "rings":
        for j in range(1, max(2, round(4 * k)) + 1):
            f = j / (max(2, round(4 * k)) + 0.5)
            d.ellipse([cx - f * w / 2, cy - f * h / 2, cx + f * w / 2, cy + f * h / 2], outline=c,
                      width=max(1, round(0.022 * size)))
    elif t.pattern == "scales":
        for _ in range(max(3, round(16 * k))):
            x, y, r = rng.uniform(x0, x1), rng.uniform(y0, y1), 0.035 * size
            d.polygon([x - r, y + r * 0.6, x + r, y + r * 0.6, x, y - r * 0.8], fill=c)
    elif t.pattern == "net":
        step = max(3.0, w / (3 + 4 * k))
        for o in np.arange(-h, w + h, step):
            d.line([x0 + o, y0, x0 + o + h, y1], fill=c, width=max(1, round(0.012 * size)))
            d.line([x0 + o + h, y0, x0 + o, y1], fill=c, width=max(1, round(0.012 * size)))
    else:  # rim: filled here, then clipped to the surface's edge by _fruit_body
        d.rectangle(box, fill=c)


def _erode(mask: np.ndarray, r: int) -> np.ndarray:
    """Binary erosion of a 0/255 mask by a (2r+1)² square (separable running minimum)."""
    m = np.pad(mask, r)
    m = sliding_window_view(m, 2 * r + 1, axis=1).min(axis=-1)
    return sliding_window_view(m, 2 * r + 1, axis=0).min(axis=-1)


def _fruit_body(t: Traits, size: int, rng) -> Image.Image:
    """One fruit body (RGBA, ``size`` square): plan, pattern on its surface, species mark."""
    L = _Layer(size)
    ax, ay = _PLAN_DRAW[t.plan](L, t, rng)
    box = L.mask.getbbox()
    if box:
        pat = Image.new("RGBA", (size, size), (0, 0, 0, 0))
        _pattern_elements(ImageDraw.Draw(pat), box, t, size, rng)
        clip = np.asarray(L.mask)
        if t.pattern == "rim":  # the band between the surface and its erosion
            band = 0.025 * t.element_size * size * (0.6 + 0.6 * t.density)
            clip = clip - _erode(clip, max(1, round(band)))
        alpha = np.asarray(pat.getchannel("A"), np.uint16) * clip // 255
        pat.putalpha(Image.fromarray(alpha.astype(np.uint8)))
        L.img.alpha_composite(pat)
    r = 0.065
    L.shape("ellipse", [ax - r, ay - r, ax + r, ay + r], t.mark, outline=0.012)
    return L.img


def _background(t: Traits, w: int, h: int, ground_y: int, rng) -> Image.Image:
    """Phylum background with low-frequency blotches and clutter, and the class ground band."""
    # mostly brightness blotches: coloured ones would blur the phylum's background hue
    blobs = rng.normal(0, 16, size=(5, 7, 1)) + rng.normal(0, 5, size=(5, 7, 3))
    low = np.asarray(t.background) + rng.uniform(-10, 10, 3) + blobs
    img = Image.fromarray(np.clip(low, 0, 255).astype(np.uint8)).resize((w, h), Image.BILINEAR)
    d = ImageDraw.Draw(img)
    for _ in range(14):  # clutter: twigs and leaves in the background colours
        c = _shade(t.background, rng.uniform(0.6, 1.6))
        x, y = rng.uniform(0, w), rng.uniform(0, ground_y)
        if rng.random() < 0.5:
            d.line([x, y, x + rng.uniform(-60, 60) * h / 300, y + rng.uniform(-40, 40) * h / 300],
                   fill=c, width=max(1, h // 100))
        else:
            r = rng.uniform(4, 14) * h / 300
            d.ellipse([x - 2 * r, y - r, x + 2 * r, y + r], fill=c)
    _ground(img, t, ground_y, rng)
    return img


@functools.lru_cache(maxsize=32)
def _ground_texture(style: str, color: tuple[int, int, int], w: int, h: int) -> Image.Image:
    """A ``(2w, h)`` texture of a ground style, drawn once per process from a fixed seed.

    Images crop it at random offsets: far cheaper than drawing hundreds of elements each time.
    """
    rng = np.random.default_rng([*color, _GROUND_STYLES.index(style), w, h])
    img = Image.new("RGB", (2 * w, h), color)
    d, u = ImageDraw.Draw(img), h / 300
    lw = max(1, round(2 * u))
    for _ in range(600):
        x, y = rng.uniform(0, 2 * w), rng.uniform(0, h)
        c = _shade(color, rng.uniform(0.65, 1.45))
        if style == "moss":
            d.ellipse([x - 3 * u, y - 3 * u, x + 3 * u, y + 3 * u], fill=c)
        elif style == "litter":
            d.ellipse([x - 9 * u, y - 4 * u, x + 9 * u, y + 4 * u], fill=c)
        elif style == "grain":
            d.line([x - 30 * u, y, x + 30 * u, y + rng.uniform(-2, 2) * u], fill=c, width=lw)
        elif style == "grass":
            d.line([x, y, x + rng.uniform(-4, 4) * u, y - 16 * u], fill=c, width=lw)
        else:  # gravel
            c = _shade((128, 128, 128), rng.uniform(0.6, 1.5))
            d.ellipse([x - 5 * u, y - 4 * u, x + 5 * u, y + 4 * u], fill=c)
    return img


def _ground(img: Image.Image, t: Traits, y0: int, rng) -> None:
    """Paste the class's ground band below ``y0``, with a wavy top edge."""
    w, h = img.size
    mask = Image.new("L", (w, h), 0)
    top = y0 + rng.uniform(-0.03, 0.03, 9) * h
    ImageDraw.Draw(mask).polygon([*zip(np.linspace(0, w, 9), top), (w, h), (0, h)], fill=255)
    x0 = int(rng.integers(0, w))
    img.paste(_ground_texture(t.ground_style, t.ground, w, h).crop((x0, 0, x0 + w, h)), (0, 0), mask)


def _place(img: Image.Image, t: Traits, h: int, x: float, base_y: float, scale: float, rng) -> None:
    """Paste a fruit body with its base at ``(x, base_y)``, scaled and slightly rotated."""
    side = max(16, round(0.8 * h * scale))
    # nearest-neighbour: the drawn shapes are not anti-aliased anyway, and it is 10x faster
    body = _fruit_body(t, side, rng).rotate(rng.uniform(-15, 15), resample=Image.NEAREST,
                                            center=(side / 2, side * 0.9))
    ImageDraw.Draw(img).ellipse([x - 0.3 * side, base_y - 0.04 * side, x + 0.3 * side,
                                 base_y + 0.05 * side], fill=_shade(t.ground, 0.55))
    img.paste(body, (round(x - side / 2), round(base_y - 0.95 * side)), body)


@functools.lru_cache(maxsize=4)
def _noise_tile(w: int, h: int) -> Image.Image:
    """A fixed ``(2w, 2h)`` sensor-noise tile of values 16 ± noise, made once per process.

    Images take random crops of it: far cheaper than drawing fresh noise for every image.
    """
    noise = np.random.default_rng([w, h]).normal(16, 4, size=(2 * h, 2 * w, 3))
    return Image.fromarray(np.clip(np.round(noise), 0, 32).astype(np.uint8))


def _lighting(img: Image.Image, rng) -> Image.Image:
    """Random exposure, contrast, colour cast, light gradient and sensor noise.

    Per-pixel work is done by Pillow's uint8 operations (a lookup table, a multiply, an add):
    it runs on every pixel of every image, so numpy floats would dominate the generation time.
    """
    w, h = img.size
    gain, contrast = rng.uniform(0.9, 1.25), rng.uniform(0.85, 1.15)
    x = np.arange(256)
    lut = np.concatenate([np.clip(((x - 128) * contrast + 128) * gain + cast, 0, 255)
                          for cast in rng.uniform(-6, 6, 3)])
    img = img.point(np.round(lut).astype(np.uint8).tolist())
    corners = np.clip(255 * (1 - rng.uniform(0, 0.3, size=(2, 2))), 0, 255).astype(np.uint8)
    light = Image.fromarray(corners).resize((w, h), Image.BILINEAR)  # darker towards some corners
    img = ImageChops.multiply(img, Image.merge("RGB", (light, light, light)))
    tile = _noise_tile(w, h)
    x0, y0 = int(rng.integers(0, tile.width - w + 1)), int(rng.integers(0, tile.height - h + 1))
    return ImageChops.add(img, tile.crop((x0, y0, x0 + w, y0 + h)), offset=-16)


def draw_image(species: str, seed: int, index: int, size: int = DEFAULT_IMAGE_SIZE) -> Image.Image:
    """Draw one RGB picture of ``species`` (accepted name), ``size`` px on its shorter side.

    Deterministic in ``(seed, index)``: the same arguments give the same pixels.
    Landscape 4:3, like most FungiTastic photographs.
    """
    t = species_traits(species)
    rng = np.random.default_rng([seed, 1, index])
    h, w = size, round(size * 4 / 3)
    ground_y = round(h * rng.uniform(0.6, 0.72))
    img = _background(t, w, h, ground_y, rng)
    x, base_y = w * rng.uniform(0.35, 0.65), ground_y + h * rng.uniform(0.08, 0.2)
    scale = rng.uniform(0.8, 1.05)
    if rng.random() < 0.35:  # a smaller second fruit body beside the first
        dx = (-1 if x > w / 2 else 1) * 0.3 * h * scale
        _place(img, t, h, x + dx, base_y - 0.03 * h, scale * rng.uniform(0.5, 0.7), rng)
    _place(img, t, h, x, base_y, scale, rng)
    return _lighting(img, rng)

def encode_jpeg(img: Image.Image) -> bytes:
    """JPEG bytes of ``img`` (no metadata, so the bytes depend on the pixels only)."""
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()
