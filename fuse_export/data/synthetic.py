"""Procedural 48x48 grayscale faces showing the seven FER-2013 expressions.

This is the project's embedded default data set. No real face data set can be downloaded where the
project is built and tested, so training, export and verification run on faces drawn here instead.
`write_fer2013_csv` writes them in Kaggle's exact ``emotion,pixels,Usage`` layout, so the default data
takes the same loader path (`fuse_export.data.fer2013`) as the real fer2013.csv would.

Every face is drawn with numpy on a coordinate grid, using anti-aliased signed-distance shapes:
a head ellipse with hair, eyebrows, eyes, nose and mouth. The label is index order
0 angry, 1 disgust, 2 fear, 3 happy, 4 sad, 5 surprise, 6 neutral (Kaggle's order), and the expression
is shown only through feature geometry: eyebrow height and angle, eye openness, mouth curve, opening,
width and asymmetry, plus brow furrows, nose wrinkles and cheek folds. Identities (face shape, skin,
eye spacing, hair, nose), per-sample pose, lighting, noise, occlusion, background texture,
variable expression intensity and a share of ambiguous blends keep the task learnable but not trivial.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

NUM_CLASSES = 7
NEUTRAL = 6
USAGES = ("Training", "PublicTest", "PrivateTest")

# Expression parameters, one column per feature; rows follow the class index order.
# Units are face coordinates: the head is about 1.5 wide and 1.8 tall, centred on 0, v grows downwards.
_PARAMS = (
    "brow_raise",   # eyebrows moved up (+) or down (-)
    "brow_tilt",    # inner ends down (+, angry V) or up (-, sad)
    "brow_arch",    # curvature of the brow
    "eye_upper",    # half-height of the eye above its centre line (upper lid)
    "eye_lower",    # half-height below it (lower lid; small = cheek-raised squint)
    "mouth_w",      # half-width of the mouth
    "mouth_curve",  # corners up (+, smile) or down (-)
    "mouth_open",   # total opening
    "mouth_upper",  # share of the opening above the lip line (disgust raises the upper lip)
    "mouth_asym",   # one corner raised (disgust sneer)
    "teeth",        # how much of the opening shows teeth
    "mouth_y",      # vertical shift of the mouth
    "furrow",       # vertical lines between the brows
    "wrinkle",      # horizontal nose-bridge wrinkles
    "fold",         # nasolabial folds (cheek raise)
)
_P = {name: i for i, name in enumerate(_PARAMS)}

# fmt: off
_EXPRESSIONS = np.array([
    #  raise   tilt   arch   eyeU   eyeL   mw     curve  open   upper  asym   teeth  my     furrow wrink  fold
    [-0.050, 0.080, -0.010, 0.032, 0.040, 0.170, -0.030, 0.000, 0.50, 0.000, 0.00, 0.000, 1.00, 0.20, 0.30],  # angry
    [-0.040, 0.040, 0.000, 0.036, 0.028, 0.190, -0.050, 0.050, 0.85, 0.080, 0.60, -0.030, 0.50, 1.00, 0.80],  # disgust
    [0.090, -0.050, 0.000, 0.110, 0.075, 0.270, -0.035, 0.130, 0.40, 0.000, 0.70, 0.010, 0.50, 0.00, 0.30],   # fear
    [0.010, 0.000, 0.030, 0.050, 0.016, 0.270, 0.120, 0.090, 0.35, 0.000, 1.00, -0.010, 0.00, 0.00, 1.00],    # happy
    [0.020, -0.085, 0.000, 0.048, 0.045, 0.185, -0.090, 0.000, 0.50, 0.000, 0.00, 0.020, 0.30, 0.00, 0.20],   # sad
    [0.130, 0.000, 0.060, 0.120, 0.080, 0.120, 0.000, 0.260, 0.45, 0.000, 0.00, 0.040, 0.00, 0.00, 0.00],     # surprise
    [0.000, 0.000, 0.020, 0.065, 0.045, 0.200, 0.000, 0.000, 0.50, 0.000, 0.00, 0.000, 0.00, 0.00, 0.10],     # neutral
], dtype=np.float64)
# Per-sample individual variation of each parameter (standard deviation), so a class is a cloud, not a point.
_PARAM_JITTER = np.array(
    [0.015, 0.015, 0.012, 0.008, 0.006, 0.018, 0.015, 0.010, 0.05, 0.010, 0.15, 0.012, 0.15, 0.15, 0.15]
)
# fmt: on


@dataclass(frozen=True)
class SyntheticSpec:
    """What to draw; every field changes the images, and the same spec always gives the same bytes."""

    samples_per_class: int = 300
    image_size: int = 48  # output is always image_size x image_size grayscale uint8; 48 is FER-2013's size
    identities: int = 12
    blend_fraction: float = 0.1
    occlusion_fraction: float = 0.15
    noise_std: float = 6.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.samples_per_class < 1:
            raise ValueError(f"samples_per_class must be >= 1, got {self.samples_per_class}")
        if self.image_size < 16:
            raise ValueError(f"image_size must be >= 16 pixels, got {self.image_size}")
        if self.identities < 1:
            raise ValueError(f"identities must be >= 1, got {self.identities}")
        for name in ("blend_fraction", "occlusion_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {self.noise_std}")


# ---------------------------------------------------------------------------------------------------
# Anti-aliased shape primitives. All take face-coordinate grids u, v of shape [n, S, S] and per-sample
# parameters of shape [n, 1, 1]; they return signed distances (negative inside) in face units.
# ---------------------------------------------------------------------------------------------------


def _coverage(dist: np.ndarray, soft: np.ndarray) -> np.ndarray:
    """Pixel coverage from a signed distance: a one-pixel linear ramp gives anti-aliased edges."""
    return np.clip(0.5 - dist / soft, 0.0, 1.0)


def _ellipse(u: np.ndarray, v: np.ndarray, a, b) -> np.ndarray:
    # First-order distance f/|grad f| of f = q - 1; exact enough for the few-pixel shapes drawn here.
    qu, qv = u / a, v / b
    q = np.sqrt(qu * qu + qv * qv)
    g = np.sqrt((qu / a) ** 2 + (qv / b) ** 2)
    return np.where(g > 1e-6, (q - 1.0) * q / np.maximum(g, 1e-6), -np.minimum(a, b))


def _segment(u: np.ndarray, v: np.ndarray, x0, y0, x1, y1, radius) -> np.ndarray:
    """Capsule (thick line segment with round ends)."""
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((u - x0) * dx + (v - y0) * dy) / np.maximum(dx * dx + dy * dy, 1e-9), 0.0, 1.0)
    return np.hypot(u - x0 - t * dx, v - y0 - t * dy) - radius


def _paint(img: np.ndarray, alpha: np.ndarray, color) -> None:
    """Alpha-composite a colour (scalar or per-sample array) onto img in place."""
    img += alpha * (color - img)


# ---------------------------------------------------------------------------------------------------
# Parameter sampling
# ---------------------------------------------------------------------------------------------------


def _identity_traits(rng: np.random.Generator, count: int) -> dict[str, np.ndarray]:
    """Fixed traits of each identity: what stays the same across that person's expressions."""
    return {
        "head_w": rng.uniform(0.60, 0.76, count),
        "head_h": rng.uniform(0.86, 0.98, count),
        "skin": rng.uniform(105.0, 205.0, count),
        "eye_sep": rng.uniform(0.25, 0.33, count),
        "eye_w": rng.uniform(0.105, 0.13, count),
        "brow_y": rng.uniform(-0.35, -0.30, count),
        "brow_w": rng.uniform(0.022, 0.032, count),
        "hair_line": rng.uniform(-0.95, -0.50, count),  # -0.95: nearly bald forehead, -0.5: low fringe
        "hair_dark": rng.uniform(0.10, 0.75, count),  # hair grey level as a share of the skin tone
        "hair_side": rng.uniform(0.0, 1.0, count),  # how far the hair comes down the sides
        "nose_len": rng.uniform(0.13, 0.24, count),
        "mouth_w": rng.uniform(-0.02, 0.02, count),
        "lip": rng.uniform(0.018, 0.028, count),
    }


def _expression_params(rng: np.random.Generator, labels: np.ndarray, blend_fraction: float) -> np.ndarray:
    """Feature parameters per sample: neutral -> label at intensity 0.5..1, some blended with another class."""
    n = labels.size

    def at_intensity(classes: np.ndarray) -> np.ndarray:
        intensity = rng.uniform(0.5, 1.0, (n, 1))
        p = _EXPRESSIONS[NEUTRAL] + intensity * (_EXPRESSIONS[classes] - _EXPRESSIONS[NEUTRAL])
        # Anger comes in two forms: pressed lips (the table) or bared teeth.
        bared = (classes == 0) & (rng.random(n) < 0.35)
        p[bared, _P["mouth_open"]] = 0.07 * intensity[bared, 0]
        p[bared, _P["teeth"]] = 1.0
        p[bared, _P["mouth_w"]] += 0.03
        return p

    params = at_intensity(labels)
    # Ambiguous blends: pull part-way towards another expression, keeping the label's weight >= 0.55.
    other = (labels + rng.integers(1, NUM_CLASSES, n)) % NUM_CLASSES
    other_params = at_intensity(other)
    weight = np.where(rng.random(n) < blend_fraction, rng.uniform(0.55, 0.8, n), 1.0)[:, None]
    params = weight * params + (1.0 - weight) * other_params
    params += rng.normal(0.0, 1.0, params.shape) * _PARAM_JITTER
    # Keep parameters physically meaningful after jitter.
    for name, lo, hi in (("eye_upper", 0.012, 0.16), ("eye_lower", 0.008, 0.11), ("mouth_w", 0.08, 0.34),
                         ("mouth_open", 0.0, 0.32), ("mouth_upper", 0.2, 0.95), ("teeth", 0.0, 1.0),
                         ("furrow", 0.0, 1.0), ("wrinkle", 0.0, 1.0), ("fold", 0.0, 1.0)):
        params[:, _P[name]] = np.clip(params[:, _P[name]], lo, hi)
    return params


def _scene_params(rng: np.random.Generator, n: int, spec: SyntheticSpec) -> dict[str, np.ndarray]:
    """Per-sample pose, lighting, background and occlusion."""
    occluded = rng.random(n) < spec.occlusion_fraction
    return {
        "tx": rng.uniform(-0.05, 0.05, n),
        "ty": rng.uniform(-0.02, 0.08, n),
        "scale": rng.uniform(1.02, 1.16, n),
        "angle": np.deg2rad(rng.uniform(-12.0, 12.0, n)),
        "contrast": rng.uniform(0.70, 1.25, n),
        "brightness": rng.uniform(-25.0, 25.0, n),
        "grad_x": rng.normal(0.0, 22.0, n),
        "grad_y": rng.normal(0.0, 15.0, n),
        "bg_level": rng.uniform(20.0, 230.0, n),
        "bg_amp": rng.uniform(4.0, 30.0, (n, 3)),
        "bg_freq": rng.uniform(1.0, 9.0, (n, 3)),
        "bg_dir": rng.uniform(0.0, np.pi, (n, 3)),
        "bg_phase": rng.uniform(0.0, 2 * np.pi, (n, 3)),
        "occluded": occluded,
        # A bar or block in image coordinates: a hand over the mouth, sunglasses, a microphone ...
        "occ_cx": rng.uniform(-0.6, 0.6, n),
        "occ_cy": rng.uniform(-0.5, 0.7, n),
        "occ_hw": rng.uniform(0.15, 0.75, n),
        "occ_hh": rng.uniform(0.08, 0.30, n),
        "occ_color": rng.uniform(0.0, 255.0, n),
        "occ_stripe": rng.uniform(0.0, 20.0, n),
    }


# ---------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------


def _render(size: int, ident: dict[str, np.ndarray], expr: np.ndarray, scene: dict[str, np.ndarray],
            noise: np.ndarray) -> np.ndarray:
    """Draw one chunk of faces; every argument is already per-sample, so this is a pure function."""
    n = expr.shape[0]

    def col(a: np.ndarray) -> np.ndarray:  # per-sample value broadcast over the pixel grid
        return np.asarray(a, dtype=np.float32).reshape(n, 1, 1)

    e = {name: col(expr[:, i]) for name, i in _P.items()}
    t = {k: col(v) for k, v in ident.items()}
    s = {k: col(v) for k, v in scene.items() if v.ndim == 1}

    # Image coordinates in [-1, 1] at pixel centres, then the inverse pose transform into face coordinates.
    axis = ((np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0)
    x = axis[None, None, :]
    y = axis[None, :, None]
    cos, sin = np.cos(s["angle"]), np.sin(s["angle"])
    dx, dy = x - s["tx"], y - s["ty"]
    u = (cos * dx + sin * dy) / s["scale"]
    v = (-sin * dx + cos * dy) / s["scale"]
    px = 2.0 / (size * s["scale"])  # one pixel in face units: the anti-aliasing ramp width
    soft = 3.0 * px  # for shadows and creases, which have no hard edge

    # Background: a base level plus three random plane waves, a cheap stand-in for cluttered scenes.
    def wave(name: str) -> np.ndarray:
        return scene[name].astype(np.float32)[:, :, None, None]

    waves = wave("bg_amp") * np.cos(
        np.pi * wave("bg_freq") * (np.cos(wave("bg_dir")) * x[None] + np.sin(wave("bg_dir")) * y[None])
        + wave("bg_phase"))
    img = s["bg_level"] + waves.sum(axis=1)

    skin, hw, hh = t["skin"], t["head_w"], t["head_h"]
    hair_col = skin * t["hair_dark"]

    # Neck and shoulders first, so the head covers their top.
    neck = np.maximum(np.abs(u) - 0.42 * hw, 0.55 - v)
    _paint(img, _coverage(neck, px), skin * 0.78)
    shoulders = _ellipse(u, v - 1.55, 1.3, 0.55)
    _paint(img, _coverage(shoulders, px), skin * 0.45 + 20.0)

    # Hair mass behind the head (shows at the top and, for long hair, down the sides).
    hair_back = np.maximum(_ellipse(u, v + 0.08, hw * 1.12, hh * 1.04), v - (-0.25 + 0.7 * t["hair_side"]))
    _paint(img, _coverage(hair_back, px) * (t["hair_line"] > -0.9), hair_col)

    # Head with shading that darkens towards the rim, so it reads as a rounded surface.
    head = _ellipse(u, v, hw, hh)
    rim = np.clip((u / hw) ** 2 + (v / hh) ** 2, 0.0, 1.0)
    _paint(img, _coverage(head, px), skin * (1.0 - 0.22 * rim * rim))

    # Hair on the forehead: above a hairline that curves down towards the temples.
    hairline = t["hair_line"] + 0.35 * (u / hw) ** 2
    fringe = np.maximum(head - 0.02, v - hairline)
    hair_tex = 1.0 + 0.08 * np.sin(55.0 * u + 9.0 * v)
    _paint(img, _coverage(fringe, px), hair_col * hair_tex)

    # Eyebrows: a thick curved stroke per side; symmetric features are drawn once via |u|.
    au = np.abs(u)
    inner, outer = t["eye_sep"] - 0.12, t["eye_sep"] + 0.15
    brow_c = t["brow_y"] - e["brow_raise"]
    along = np.clip((au - inner) / (outer - inner), 0.0, 1.0)  # 0 at the inner end, 1 at the outer
    brow_line = (brow_c + e["brow_tilt"] * (1.0 - 2.0 * along)
                 - e["brow_arch"] * (1.0 - (2.0 * along - 1.0) ** 2))
    ends = np.maximum(np.maximum(inner - au, au - outer), 0.0)
    slope = 2.0 * e["brow_tilt"] / (outer - inner)
    brow = np.hypot(ends, np.abs(v - brow_line) / np.sqrt(1.0 + slope * slope)) - t["brow_w"]
    _paint(img, _coverage(brow, px), skin * 0.3 * (0.5 + t["hair_dark"]))

    # Eyes: a soft socket shadow, then the eye opening with separate upper/lower lid heights.
    eye_y = -0.17
    eu = au - t["eye_sep"]
    ev = v - eye_y
    socket = _ellipse(eu, ev + 0.02, t["eye_w"] * 1.5, 0.11 + 0.4 * e["eye_upper"])
    _paint(img, _coverage(socket, soft) * 0.35, skin * 0.7)
    lid = np.where(ev < 0, e["eye_upper"], e["eye_lower"])
    eye = _ellipse(eu, ev, t["eye_w"], lid)
    eye_cov = _coverage(eye, px)
    _paint(img, eye_cov, np.minimum(skin * 1.05 + 15.0, 250.0))
    iris = np.hypot(eu, ev) - np.minimum(0.06, 0.6 * t["eye_w"])
    _paint(img, _coverage(iris, px) * eye_cov, skin * 0.22)
    # Upper lid line: a dark rim on the top of the opening, the strongest eye cue in small images.
    upper_rim = np.maximum(np.abs(eye + 0.008) - 0.014, ev)
    _paint(img, _coverage(upper_rim, px) * 0.9, skin * 0.3)

    # Brow furrows (anger, disgust, fear) and nose-bridge wrinkles (disgust).
    furrow = _segment(au, v, 0.045, brow_c - 0.01, 0.035, brow_c + 0.09, 0.010)
    _paint(img, _coverage(furrow, 2.0 * px) * 0.6 * e["furrow"], skin * 0.55)
    for dv in (-0.03, 0.02):
        wr = _segment(au, v, 0.0, -0.04 + dv, 0.07, -0.06 + dv, 0.009)
        _paint(img, _coverage(wr, 2.0 * px) * 0.6 * e["wrinkle"], skin * 0.6)

    # Nose: a side shadow along the bridge and two nostrils at identity-specific length.
    nose_end = t["nose_len"]
    bridge = _segment(u, v, 0.05, -0.08, 0.07, nose_end - 0.03, 0.012)
    _paint(img, _coverage(bridge, soft) * 0.4, skin * 0.7)
    nostrils = _ellipse(au - 0.055, v - nose_end, 0.03, 0.017)
    _paint(img, _coverage(nostrils, px) * 0.85, skin * 0.4)

    # Mouth: a lip line vc(u) that curves (smile/frown) and tilts one corner (sneer), with an opening
    # split above/below it; a distance in v is close enough to the true distance for these slopes.
    mw = e["mouth_w"] + t["mouth_w"]
    mouth_y = nose_end + 0.25 + e["mouth_y"]
    tu = u / mw
    tc = np.clip(tu, -1.0, 1.0)
    vc = mouth_y - e["mouth_curve"] * (tc * tc - 0.35) - e["mouth_asym"] * np.maximum(tc, 0.0) ** 2 * 1.5
    profile = np.sqrt(np.clip(1.0 - tc * tc, 0.0, 1.0))
    up = e["mouth_open"] * e["mouth_upper"] * profile
    lo = e["mouth_open"] * (1.0 - e["mouth_upper"]) * profile
    side = (np.abs(tu) - 1.0) * mw
    # Nasolabial folds run from beside the nose to the mouth corners; drawn before the lips.
    corner_y = mouth_y - e["mouth_curve"] * 0.65 - e["mouth_asym"] * 1.5 * (u > 0)
    fold = _segment(au, v, 0.12, nose_end - 0.02, mw + 0.05, corner_y + 0.02, 0.010)
    _paint(img, _coverage(fold, 2.0 * px) * 0.55 * e["fold"], skin * 0.6)
    lips = np.maximum(np.maximum(vc - up - t["lip"] - v, v - vc - lo - t["lip"]), side)
    _paint(img, _coverage(lips, px), skin * 0.62)
    opening = np.maximum(np.maximum(vc - up - v, v - vc - lo), side + 0.01)
    open_cov = _coverage(opening, px) * (e["mouth_open"] > 0.004)
    _paint(img, open_cov, skin * 0.15)
    teeth_edge = v - (vc - up + 0.6 * (up + lo))
    _paint(img, open_cov * _coverage(teeth_edge, px) * e["teeth"], np.minimum(skin * 1.1 + 25.0, 245.0))

    # Occlusion, in image coordinates: a striped block in front of part of the face.
    occ = np.maximum(np.abs(x - s["occ_cx"]) - s["occ_hw"], np.abs(y - s["occ_cy"]) - s["occ_hh"])
    occ_img = s["occ_color"] + s["occ_stripe"] * np.sin(25.0 * (x + 0.5 * y))
    _paint(img, _coverage(occ, 2.0 / size) * s["occluded"], occ_img)

    # Camera: contrast/brightness, a linear lighting gradient, then sensor noise.
    img = (img - 128.0) * s["contrast"] + 128.0 + s["brightness"] + s["grad_x"] * x + s["grad_y"] * y
    img += noise
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _draw_labels(rng: np.random.Generator, spec: SyntheticSpec) -> np.ndarray:
    """Balanced expression labels in a seeded order (the first draw of a spec's generator)."""
    return rng.permutation(np.repeat(np.arange(NUM_CLASSES, dtype=np.int64), spec.samples_per_class))


def identity_traits(spec: SyntheticSpec) -> dict[str, np.ndarray]:
    """The fixed traits of the spec's identities (arrays of `spec.identities` values), as `generate_faces` draws
    them: to check that two specs share no person (the identity-pretraining stand-in against the experiments)."""
    rng = np.random.default_rng(spec.seed)
    _draw_labels(rng, spec)
    return _identity_traits(rng, spec.identities)


def generate_faces(spec: SyntheticSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (images uint8 [N, S, S], labels int64 [N], identity int64 [N]).

    N = 7 * samples_per_class; classes are balanced and the order is shuffled deterministically.
    """
    rng = np.random.default_rng(spec.seed)
    n = NUM_CLASSES * spec.samples_per_class
    labels = _draw_labels(rng, spec)
    traits = _identity_traits(rng, spec.identities)
    identity = rng.integers(0, spec.identities, n).astype(np.int64)
    ident = {k: v[identity] for k, v in traits.items()}
    expr = _expression_params(rng, labels, spec.blend_fraction)
    scene = _scene_params(rng, n, spec)

    size = spec.image_size
    images = np.empty((n, size, size), dtype=np.uint8)
    # Chunks bound the float32 work arrays (~ a few MB each); all randomness except noise is drawn above,
    # and noise is drawn chunk by chunk in order, so the result does not depend on the chunk size.
    chunk = max(1, 262144 // (size * size))
    for start in range(0, n, chunk):
        sl = slice(start, min(start + chunk, n))
        noise = rng.standard_normal((sl.stop - sl.start, size, size), dtype=np.float32) * np.float32(spec.noise_std)
        images[sl] = _render(size, {k: v[sl] for k, v in ident.items()}, expr[sl],
                             {k: v[sl] for k, v in scene.items()}, noise)
    return images, labels, identity


def _split_usage(labels: np.ndarray, fractions: tuple[float, float, float]) -> np.ndarray:
    """Usage index (0 Training, 1 PublicTest, 2 PrivateTest) per sample, stratified per class."""
    usage = np.empty(labels.size, dtype=np.int64)
    cum = np.cumsum(fractions)
    for c in range(NUM_CLASSES):
        idx = np.flatnonzero(labels == c)  # already shuffled, so taking them in order is a random split
        k = idx.size
        bounds = np.rint(cum * k).astype(int)
        # Every split gets at least one sample of every class, taken from the largest split.
        sizes = np.diff(np.concatenate([[0], bounds]))
        sizes[-1] = k - sizes[:-1].sum()
        for i in range(3):
            while sizes[i] < 1:
                sizes[int(np.argmax(sizes))] -= 1
                sizes[i] += 1
        usage[idx] = np.repeat(np.arange(3), sizes)
    return usage


def write_fer2013_csv(path: str | os.PathLike, spec: SyntheticSpec,
                      fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> dict[str, int]:
    """Generate faces and write them in the Kaggle FER-2013 CSV format. Returns counts per Usage.

    Rows are grouped Training, PublicTest, PrivateTest as in Kaggle's file. The file is written to a
    temporary name in the same directory and renamed into place, so it is either complete or absent.
    """
    if spec.image_size != 48:
        raise ValueError(f"FER-2013 CSV holds 48x48 images; spec.image_size is {spec.image_size}")
    if len(fractions) != 3 or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be three positive shares summing to 1, got {fractions}")
    if spec.samples_per_class < 3:
        raise ValueError("samples_per_class must be >= 3 so every split has every class")

    images, labels, _ = generate_faces(spec)
    usage = _split_usage(labels, fractions)
    order = np.argsort(usage, kind="stable")
    tokens = [str(i) for i in range(256)]  # lookup beats str() per pixel by a wide margin
    lines = ["emotion,pixels,Usage\n"]
    flat = images.reshape(len(images), -1)
    for i in order.tolist():
        pixels = " ".join(map(tokens.__getitem__, flat[i].tolist()))
        lines.append(f"{labels[i]},{pixels},{USAGES[usage[i]]}\n")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp",
                                      delete=False, encoding="utf-8", newline="")
    try:
        with tmp:
            tmp.writelines(lines)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.chmod(tmp.name, 0o644)  # NamedTemporaryFile creates 0600; a data file should be readable
        os.replace(tmp.name, path)
    except BaseException:
        try:
            os.unlink(tmp.name)
        except FileNotFoundError:
            pass
        raise
    return {name: int((usage == i).sum()) for i, name in enumerate(USAGES)}
