"""How a synthetic face is drawn: the renderer behind `fuse_export.data.synthetic`.

It holds the layout of the per-sample feature vector (`PARAMS`: eyebrow height and angle, eye openness, mouth curve,
opening, width and asymmetry, furrows, wrinkles, folds), the anti-aliased signed-distance shape primitives, and
`render`, which turns identity traits, feature parameters and scene parameters into SxS uint8 pixels: background,
neck and shoulders, hair, head, eyebrows, eyes, nose, mouth, occlusion, lighting and sensor noise.
It draws no random numbers; `fuse_export.data.synthetic` samples every parameter.
"""

from __future__ import annotations

import numpy as np

# The feature vector `render` reads per sample (the columns of the synthetic module's expression table).
# Units are face coordinates: the head is about 1.5 wide and 1.8 tall, centred on 0, v grows downwards.
PARAMS = (
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
PARAM_INDEX = {name: i for i, name in enumerate(PARAMS)}


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
# Rendering
# ---------------------------------------------------------------------------------------------------


def render(size: int, ident: dict[str, np.ndarray], expr: np.ndarray, scene: dict[str, np.ndarray],
           noise: np.ndarray) -> np.ndarray:
    """Draw one chunk of faces; every argument is already per-sample, so this is a pure function."""
    n = expr.shape[0]

    def col(a: np.ndarray) -> np.ndarray:  # per-sample value broadcast over the pixel grid
        return np.asarray(a, dtype=np.float32).reshape(n, 1, 1)

    e = {name: col(expr[:, i]) for name, i in PARAM_INDEX.items()}
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
