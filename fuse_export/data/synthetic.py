"""Procedural 48x48 grayscale faces showing the seven FER-2013 expressions.

This is the project's embedded default data set. No real face data set can be downloaded where the
project is built and tested, so training, export and verification run on faces drawn here instead.
`fuse_export.data.synthetic_csv.write_fer2013_csv` writes them in Kaggle's exact ``emotion,pixels,Usage`` layout,
so the default data takes the same loader path (`fuse_export.data.fer2013`) as the real fer2013.csv would.

This module holds what is drawn: the spec, the expression table, the seeded sampling of identities,
expressions and scenes, and `generate_faces`. `fuse_export.data.synthetic_render` draws each face with numpy
on a coordinate grid, using anti-aliased signed-distance shapes: a head ellipse with hair, eyebrows, eyes,
nose and mouth. The label is index order 0 angry, 1 disgust, 2 fear, 3 happy, 4 sad, 5 surprise, 6 neutral
(Kaggle's order), and the expression is shown only through feature geometry: eyebrow height and angle, eye
openness, mouth curve, opening, width and asymmetry, plus brow furrows, nose wrinkles and cheek folds.
Identities (face shape, skin, eye spacing, hair, nose), per-sample pose, lighting, noise, occlusion, background
texture, variable expression intensity and a share of ambiguous blends keep the task learnable but not trivial.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fuse_export.data.synthetic_render import PARAM_INDEX, render

NUM_CLASSES = 7
NEUTRAL = 6

# Expression parameters, one column per feature of synthetic_render.PARAMS; rows follow the class index order.
# Units are face coordinates: the head is about 1.5 wide and 1.8 tall, centred on 0, v grows downwards.
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
        p[bared, PARAM_INDEX["mouth_open"]] = 0.07 * intensity[bared, 0]
        p[bared, PARAM_INDEX["teeth"]] = 1.0
        p[bared, PARAM_INDEX["mouth_w"]] += 0.03
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
        params[:, PARAM_INDEX[name]] = np.clip(params[:, PARAM_INDEX[name]], lo, hi)
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
        images[sl] = render(size, {k: v[sl] for k, v in ident.items()}, expr[sl],
                            {k: v[sl] for k, v in scene.items()}, noise)
    return images, labels, identity
