"""Procedural driving scenes with pixel-exact Cityscapes trainId labels.

Every primitive is drawn into the RGB image and into the label image with the same OpenCV call,
in far-to-near order, so occlusion in the labels is exactly the occlusion in the picture. Geometry
follows a pinhole camera over flat ground (lines of the road meet at the vanishing point, objects
shrink with depth), and colors, textures, lighting and noise vary per seed so that shape and
context, not a single color, decide the class. The sky is always bluish and vegetation greenish, so
a swapped channel order (BGR fed as RGB) visibly breaks a model trained on these scenes.

Only numpy and OpenCV are used; a 256x512 frame takes a few milliseconds.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from evit_ros.datasets import CITYSCAPES, IGNORE_ID
from evit_ros.errors import ConfigError

ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEGETATION, TERRAIN, SKY, PERSON = range(12)
CAR, TRUCK = 13, 14
BICYCLE = 18

# Classes the generator draws (rider, bus, train and motorcycle never appear).
SCENE_CLASSES: tuple[int, ...] = (ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEGETATION, TERRAIN,
                                  SKY, PERSON, CAR, TRUCK, BICYCLE)


@dataclass(frozen=True)
class CameraModel:
    """Pinhole camera over flat ground: focal length and horizon row as fractions of the image size."""

    focal_frac: float = 0.8        # fx = fy = focal_frac * width
    horizon_frac: float = 0.45     # row of the horizon / height (principal point at the image center)
    height_m: float = 1.5          # camera height above the road

    def intrinsics(self, height: int, width: int) -> tuple[float, float, float, float]:
        """(fx, fy, cx, cy) in pixels for an image of ``height`` x ``width``."""
        f = self.focal_frac * width
        return f, f, width / 2.0, height / 2.0

    def pitch_deg(self, height: int, width: int) -> float:
        """Downward pitch that puts the horizon at ``horizon_frac`` (positive = looking down)."""
        f, _, _, cy = self.intrinsics(height, width)
        return float(np.degrees(np.arctan((cy - self.horizon_frac * height) / f)))


@dataclass
class SceneObject:
    """One drawn object: its class, draw order, bounding box and (when recorded) its full footprint."""

    class_id: int
    name: str
    order: int
    bbox: tuple[int, int, int, int]          # x0, y0, x1, y1 (inclusive-exclusive), clipped to the image
    mask: np.ndarray | None = field(default=None, repr=False)   # bool HxW footprint before occlusion


class _Painter:
    """Draws each primitive into the image and the label map at once (and into an object mask if recording)."""

    def __init__(self, height: int, width: int, record: bool) -> None:
        self.h, self.w = height, width
        self.img = np.zeros((height, width, 3), np.uint8)
        self.lab = np.full((height, width), IGNORE_ID, np.uint8)
        self.record = record
        self.objects: list[SceneObject] = []
        self._cls = IGNORE_ID
        self._mask: np.ndarray | None = None

    def begin(self, class_id: int) -> None:
        self._cls = class_id
        self._mask = np.zeros((self.h, self.w), np.uint8) if self.record else None

    def end(self) -> None:
        if self._mask is None:
            return
        ys, xs = np.nonzero(self._mask)
        if len(xs):
            bbox = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
            self.objects.append(SceneObject(self._cls, CITYSCAPES.class_names[self._cls], len(self.objects),
                                            bbox, self._mask.astype(bool)))
        self._mask = None

    def _targets(self, color: tuple[int, ...]) -> list[tuple[np.ndarray, object]]:
        t: list[tuple[np.ndarray, object]] = [(self.img, tuple(int(c) for c in color)), (self.lab, int(self._cls))]
        if self._mask is not None:
            t.append((self._mask, 1))
        return t

    def poly(self, pts: np.ndarray, color: tuple[int, ...]) -> None:
        p = np.round(np.asarray(pts, np.float64) * 16).astype(np.int32)
        for dst, c in self._targets(color):
            cv2.fillPoly(dst, [p], c, cv2.LINE_8, 4)

    def rect(self, x0: float, y0: float, x1: float, y1: float, color: tuple[int, ...]) -> None:
        self.poly(np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]), color)

    def circle(self, cx: float, cy: float, r: float, color: tuple[int, ...], thickness: int = -1) -> None:
        c16 = (int(round(cx * 16)), int(round(cy * 16)))
        for dst, c in self._targets(color):
            cv2.circle(dst, c16, max(1, int(round(r * 16))), c, thickness, cv2.LINE_8, 4)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, color: tuple[int, ...]) -> None:
        c16 = (int(round(cx * 16)), int(round(cy * 16)))
        ax = (max(1, int(round(rx * 16))), max(1, int(round(ry * 16))))
        for dst, c in self._targets(color):
            cv2.ellipse(dst, c16, ax, 0, 0, 360, c, -1, cv2.LINE_8, 4)

    def line(self, x0: float, y0: float, x1: float, y1: float, color: tuple[int, ...], thickness: float) -> None:
        p0 = (int(round(x0 * 16)), int(round(y0 * 16)))
        p1 = (int(round(x1 * 16)), int(round(y1 * 16)))
        for dst, c in self._targets(color):
            cv2.line(dst, p0, p1, c, max(1, int(round(thickness))), cv2.LINE_8, 4)


def _jitter(rng: np.random.Generator, base: tuple[int, int, int], amount: int) -> tuple[int, int, int]:
    c = np.clip(np.array(base) + rng.integers(-amount, amount + 1, 3), 0, 255)
    return int(c[0]), int(c[1]), int(c[2])


def _shade(color: tuple[int, int, int], k: float) -> tuple[int, int, int]:
    return tuple(int(np.clip(c * k, 0, 255)) for c in color)  # type: ignore[return-value]


_CAR_COLORS = ((200, 30, 30), (30, 60, 170), (235, 235, 235), (25, 25, 25), (130, 130, 140), (60, 120, 60),
               (220, 180, 40), (90, 40, 20), (160, 170, 190), (120, 20, 60), (0, 110, 140))
_BUILDING_COLORS = ((150, 90, 70), (120, 120, 120), (190, 170, 140), (160, 60, 50), (90, 90, 100),
                    (210, 200, 180), (110, 80, 60), (170, 160, 120))
_CLOTHES = ((30, 30, 40), (200, 40, 40), (40, 70, 150), (220, 220, 210), (60, 120, 60), (120, 90, 60),
            (230, 160, 30), (90, 30, 110))
_SKIN = ((230, 190, 160), (190, 140, 100), (120, 80, 50), (245, 210, 180))


class _Scene:
    def __init__(self, seed: int, height: int, width: int, camera: CameraModel | None, record: bool) -> None:
        self.rng = np.random.default_rng(seed)
        rng = self.rng
        self.h, self.w = height, width
        if camera is None:
            camera = CameraModel(float(rng.uniform(0.62, 0.95)), float(rng.uniform(0.36, 0.52)),
                                 float(rng.uniform(1.3, 1.8)))
        self.f = camera.focal_frac * width
        self.yh = camera.horizon_frac * height
        self.cam_h = camera.height_m
        self.vx = width / 2.0
        self.p = _Painter(height, width, record)
        self.lateral = float(rng.uniform(-1.5, 1.5))   # camera offset from the road center (m)

    # ---- projection ------------------------------------------------------------------------------------
    def proj(self, x: float, y_up: float, z: float) -> tuple[float, float]:
        """World point (x right, y up from the ground, z forward; camera at height cam_h) -> pixel."""
        return self.vx + self.f * (x - self.lateral) / z, self.yh + self.f * (self.cam_h - y_up) / z

    def ground_quad(self, x0: float, x1: float, z0: float, z1: float) -> np.ndarray:
        return np.array([self.proj(x0, 0, z0), self.proj(x1, 0, z0), self.proj(x1, 0, z1), self.proj(x0, 0, z1)])

    # ---- layers ----------------------------------------------------------------------------------------
    def sky(self) -> None:
        rng, p = self.rng, self.p
        top = np.array([rng.uniform(30, 90), rng.uniform(80, 140), rng.uniform(170, 235)])
        bottom = np.array([rng.uniform(150, 210), rng.uniform(185, 225), rng.uniform(215, 250)])
        t = np.linspace(0.0, 1.0, self.h)[:, None] ** rng.uniform(0.6, 1.5)
        grad = top[None] * (1 - t) + bottom[None] * t
        p.img[:] = np.clip(grad, 0, 255).astype(np.uint8)[:, None, :]
        p.lab[:] = SKY
        p.begin(SKY)
        if p._mask is not None:
            p._mask[:] = 1
        p.end()
        for _ in range(int(rng.integers(0, 5))):   # clouds: still sky
            p.begin(SKY)
            cx, cy = rng.uniform(0, self.w), rng.uniform(0, self.yh * 0.7)
            g = int(rng.uniform(215, 250))
            for _ in range(int(rng.integers(3, 7))):
                p.ellipse(cx + rng.uniform(-40, 40), cy + rng.uniform(-8, 8), rng.uniform(15, 45),
                          rng.uniform(6, 14), (g, g, min(255, g + 5)))
            p.end()

    def ground(self) -> None:
        rng, p = self.rng, self.p
        far, near = 400.0, 0.5
        self.road_half = float(rng.uniform(3.5, 8.0))
        self.walk_w = (float(rng.uniform(1.5, 4.0)), float(rng.uniform(1.5, 4.0)))
        self.side_kind = tuple(rng.choice(['terrain', 'sidewalk', 'terrain_walk']) for _ in range(2))
        # ground outside the sidewalks: terrain (grass/dirt) or paved
        grass = _jitter(rng, (rng.choice([90, 120, 150]), 150, 70), 25)
        paved = _jitter(rng, (175, 160, 165), 20)
        walk_col = _jitter(rng, (rng.choice([180, 200, 160]), 150, 175), 25)
        for side in (-1, 1):
            kind = self.side_kind[0 if side < 0 else 1]
            edge = self.road_half + self.walk_w[0 if side < 0 else 1]
            outer = side * 300.0
            p.begin(TERRAIN if kind != 'sidewalk' else SIDEWALK)
            p.poly(self.ground_quad(side * edge, outer, far, near), grass if kind != 'sidewalk' else paved)
            p.end()
            if kind == 'terrain':
                p.begin(TERRAIN)
                for _ in range(int(rng.integers(20, 60))):   # grass tufts, dirt patches
                    z = float(rng.uniform(3, 60))
                    x = side * (edge + rng.uniform(0, 20))
                    u, v = self.proj(x, 0, z)
                    r = max(1.0, self.f * rng.uniform(0.1, 0.5) / z)
                    p.ellipse(u, v, r * 2, r * 0.6, _shade(grass, rng.uniform(0.7, 1.2)))
                p.end()
            p.begin(SIDEWALK)
            inner = side * self.road_half
            p.poly(self.ground_quad(inner, side * edge, far, near), walk_col)
            curb = _shade(walk_col, 1.15)
            p.poly(self.ground_quad(inner, inner + side * 0.25, far, near), curb)
            tile = float(rng.uniform(1.0, 2.5))
            z = 2.0
            while z < 80:   # paving joints
                a, b = self.proj(inner, 0, z), self.proj(side * edge, 0, z)
                p.line(a[0], a[1], b[0], b[1], _shade(walk_col, 0.8), 1)
                z += tile
            p.end()
        p.begin(ROAD)
        asphalt = _jitter(rng, (int(rng.uniform(70, 125)),) * 3, 8)
        p.poly(self.ground_quad(-self.road_half, self.road_half, far, near), asphalt)
        for _ in range(int(rng.integers(0, 6))):   # patches
            z = float(rng.uniform(5, 50))
            x = float(rng.uniform(-self.road_half + 1, self.road_half - 1))
            p.poly(self.ground_quad(x, x + rng.uniform(0.5, 2.5), z, z + rng.uniform(1, 6)),
                   _shade(asphalt, rng.uniform(0.75, 1.2)))
        mark = (245, 245, 240) if rng.random() < 0.7 else (240, 200, 60)
        n_lanes = int(rng.integers(1, 4))
        for i in range(1, n_lanes + 1):
            x = -self.road_half + 2 * self.road_half * i / (n_lanes + 1)
            dash, gap = float(rng.uniform(2, 4)), float(rng.uniform(3, 8))
            solid = rng.random() < 0.25
            z = 1.0 + rng.uniform(0, gap)
            while z < 120:
                z1 = 120.0 if solid else z + dash
                p.poly(self.ground_quad(x - 0.07, x + 0.07, z, z1), mark)
                z = z1 + gap
        for side in (-1, 1):   # edge lines
            x = side * (self.road_half - 0.3)
            p.poly(self.ground_quad(x - 0.06, x + 0.06, 1.0, 200), (235, 235, 235))
        if rng.random() < 0.35:   # crosswalk
            z = float(rng.uniform(8, 25))
            x = -self.road_half + 0.5
            while x < self.road_half - 0.5:
                p.poly(self.ground_quad(x, x + 0.5, z, z + 3.0), (240, 240, 235))
                x += 1.0
        p.end()

    def far_band(self) -> None:
        """Distant skyline and tree line at the horizon (behind everything else)."""
        rng, p = self.rng, self.p
        x = -10.0
        while x < self.w + 10:
            bw = float(rng.uniform(15, 60))
            if rng.random() < 0.5:
                p.begin(BUILDING)
                top = self.yh - rng.uniform(5, self.h * 0.25)
                c = _jitter(rng, _BUILDING_COLORS[int(rng.integers(len(_BUILDING_COLORS)))], 20)
                p.rect(x, top, x + bw, self.yh + 2, _shade(c, 0.9))
            else:
                p.begin(VEGETATION)
                g = _jitter(rng, (60, 110, 45), 25)
                for _ in range(4):
                    p.ellipse(x + rng.uniform(0, bw), self.yh - rng.uniform(0, 12), rng.uniform(6, 18),
                              rng.uniform(5, 14), _shade(g, rng.uniform(0.8, 1.15)))
            p.end()
            x += bw

    def side_structures(self, items: list[tuple[float, object]]) -> None:
        """Buildings, walls, fences and hedges along both sides, queued by depth."""
        rng = self.rng
        for side in (-1, 1):
            edge = self.road_half + self.walk_w[0 if side < 0 else 1]
            z = float(rng.uniform(4, 15))
            while z < 120:
                length = float(rng.uniform(8, 30))
                kind = rng.choice(['building', 'building', 'building', 'wall', 'fence', 'hedge', 'gap'])
                terrain_side = self.side_kind[0 if side < 0 else 1] != 'sidewalk'
                setback = float(rng.uniform(0, 4)) if kind == 'building' else float(rng.uniform(0, 1))
                setback += float(rng.uniform(2, 8)) if terrain_side and kind == 'building' else 0.0
                x = side * (edge + setback)
                zz = z
                if kind == 'building':
                    items.append((zz + length, lambda x=x, zz=zz, ln=length: self.building(x, zz, zz + ln)))
                elif kind in ('wall', 'fence'):
                    cls = WALL if kind == 'wall' else FENCE
                    items.append((zz + length, lambda x=x, zz=zz, ln=length, c=cls: self.wall(x, zz, zz + ln, c)))
                elif kind == 'hedge':
                    items.append((zz + length, lambda x=x, zz=zz, ln=length: self.hedge(x, zz, zz + ln)))
                z += length + (rng.uniform(0, 6) if rng.random() < 0.4 else 0)

    def _facade(self, x: float, z0: float, z1: float, top: float, depth: float) -> tuple[np.ndarray, np.ndarray]:
        side = 1 if x > 0 else -1
        side_face = np.array([self.proj(x, 0, z0), self.proj(x, 0, z1), self.proj(x, top, z1), self.proj(x, top, z0)])
        front = np.array([self.proj(x, 0, z0), self.proj(x + side * depth, 0, z0),
                          self.proj(x + side * depth, top, z0), self.proj(x, top, z0)])
        return side_face, front

    def building(self, x: float, z0: float, z1: float) -> None:
        rng, p = self.rng, self.p
        top = float(rng.uniform(6, 30))
        base = _jitter(rng, _BUILDING_COLORS[int(rng.integers(len(_BUILDING_COLORS)))], 25)
        side_face, front = self._facade(x, z0, z1, top, 30.0)
        p.begin(BUILDING)
        p.poly(front, _shade(base, rng.uniform(0.65, 0.85)))
        p.poly(side_face, base)
        floor_h = float(rng.uniform(2.8, 3.6))
        col_w = float(rng.uniform(2.0, 4.0))
        win = _jitter(rng, (rng.choice([40, 70, 140]), 80, 100), 30)
        frac_w, frac_h = float(rng.uniform(0.35, 0.7)), float(rng.uniform(0.35, 0.6))
        yb = floor_h * 0.5
        while yb + floor_h * frac_h < top - 0.5:
            zc = z0 + col_w * 0.3
            while zc + col_w * frac_w < z1:
                q = np.array([self.proj(x, yb, zc), self.proj(x, yb, zc + col_w * frac_w),
                              self.proj(x, yb + floor_h * frac_h, zc + col_w * frac_w),
                              self.proj(x, yb + floor_h * frac_h, zc)])
                if abs(q[1, 0] - q[0, 0]) >= 1.0:
                    p.poly(q, _shade(win, rng.uniform(0.8, 1.3)))
                zc += col_w
            yb += floor_h
        if rng.random() < 0.5:   # shop front band at street level
            band = np.array([self.proj(x, 0.3, z0), self.proj(x, 0.3, z1), self.proj(x, 2.6, z1),
                             self.proj(x, 2.6, z0)])
            p.poly(band, _jitter(rng, (60, 60, 70), 40))
        p.end()

    def wall(self, x: float, z0: float, z1: float, cls: int) -> None:
        rng, p = self.rng, self.p
        top = float(rng.uniform(1.2, 3.0))
        side_face, front = self._facade(x, z0, z1, top, 0.3)
        p.begin(cls)
        if cls == WALL:
            c = _jitter(rng, (150, 150, 160), 30)
            p.poly(front, _shade(c, 0.8))
            p.poly(side_face, c)
            step = float(rng.uniform(1.5, 4.0))
            z = z0 + step
            while z < z1:   # panel joints
                a, b = self.proj(x, 0, z), self.proj(x, top, z)
                p.line(a[0], a[1], b[0], b[1], _shade(c, 0.7), 1)
                z += step
        else:
            c = _jitter(rng, (rng.choice([150, 110, 190]), 120, 100), 30)
            p.poly(side_face, _shade(c, 0.55))
            step = float(rng.uniform(0.2, 0.4))
            z = z0
            while z < z1:   # slats
                a, b = self.proj(x, 0, z), self.proj(x, top, z)
                p.line(a[0], a[1], b[0], b[1], c, max(2.0, self.f * 0.12 / z))
                z += step
            for y in (top * 0.15, top * 0.85):
                a, b = self.proj(x, y, z0), self.proj(x, y, z1)
                p.line(a[0], a[1], b[0], b[1], _shade(c, 1.1), max(1.0, self.f * 0.06 / z0))
        p.end()

    def hedge(self, x: float, z0: float, z1: float) -> None:
        rng, p = self.rng, self.p
        top = float(rng.uniform(1.0, 2.5))
        g = _jitter(rng, (55, 105, 40), 25)
        side_face, _ = self._facade(x, z0, z1, top, 0.5)
        p.begin(VEGETATION)
        p.poly(side_face, g)
        for _ in range(int(rng.integers(10, 30))):
            z = float(rng.uniform(z0, z1))
            u, v = self.proj(x, rng.uniform(0.2, top), z)
            r = max(1.0, self.f * rng.uniform(0.2, 0.5) / z)
            p.circle(u, v, r, _shade(g, rng.uniform(0.7, 1.3)))
        p.end()

    def tree(self, x: float, z: float) -> None:
        rng, p = self.rng, self.p
        trunk_h = float(rng.uniform(2.0, 4.0))
        crown = float(rng.uniform(1.5, 3.5))
        u0, v0 = self.proj(x, 0, z)
        u1, v1 = self.proj(x, trunk_h, z)
        p.begin(VEGETATION)
        p.line(u0, v0, u1, v1, _jitter(rng, (90, 65, 40), 20), max(2.0, self.f * 0.3 / z))
        g = _jitter(rng, (rng.choice([50, 80, 100]), 120, 40), 25)
        cu, cv = self.proj(x, trunk_h + crown * 0.6, z)
        r = self.f * crown / z
        for _ in range(int(rng.integers(6, 14))):
            p.circle(cu + rng.uniform(-0.6, 0.6) * r, cv + rng.uniform(-0.6, 0.5) * r,
                     r * rng.uniform(0.35, 0.7), _shade(g, rng.uniform(0.7, 1.25)))
        p.end()

    def pole_with(self, x: float, z: float, what: str) -> None:
        rng, p = self.rng, self.p
        height = float(rng.uniform(3.0, 6.0)) if what != 'light' else float(rng.uniform(3.5, 5.5))
        u0, v0 = self.proj(x, 0, z)
        u1, v1 = self.proj(x, height, z)
        w = max(10.0, self.f * float(rng.uniform(0.3, 0.45)) / z)
        p.begin(POLE)
        p.rect(u0 - w / 2, v1, u0 + w / 2, v0, _jitter(rng, (140, 140, 140), 40))
        p.end()
        s = self.f / z
        if what == 'sign':
            p.begin(SIGN)
            kind = int(rng.integers(4))
            r = max(11.0, s * float(rng.uniform(0.5, 0.65)))
            cy = v1 + r * 0.5
            if kind == 0:   # prohibition: red ring, white inside
                p.circle(u0, cy, r, (200, 25, 25))
                p.circle(u0, cy, r * 0.7, (240, 240, 240))
            elif kind == 1:   # mandatory: blue disc, white arrow
                p.circle(u0, cy, r, (30, 70, 180))
                p.line(u0, cy + r * 0.5, u0, cy - r * 0.5, (240, 240, 240), max(1.0, r * 0.25))
            elif kind == 2:   # warning triangle
                tri = np.array([[u0, cy - r], [u0 + r, cy + r * 0.8], [u0 - r, cy + r * 0.8]])
                p.poly(tri, (210, 30, 30))
                p.poly(tri * 0.6 + np.array([u0, cy]) * 0.4 + np.array([0, r * 0.1]), (245, 240, 230))
            else:   # rectangular direction sign
                p.rect(u0 - r * 1.4, cy - r * 0.7, u0 + r * 1.4, cy + r * 0.7,
                       (20, 100, 50) if rng.random() < 0.5 else (240, 200, 30))
            p.end()
        elif what == 'light':
            p.begin(LIGHT)
            bw, bh = max(12.0, s * 0.5), max(26.0, s * 1.2)
            p.rect(u0 - bw / 2, v1 - bh, u0 + bw / 2, v1, _jitter(rng, (35, 35, 35), 15))
            lit = int(rng.integers(3))
            for i, col in enumerate(((230, 30, 20), (240, 180, 20), (30, 220, 90))):
                c = col if i == lit else _shade(col, 0.25)
                p.circle(u0, v1 - bh * (5 - 2 * i) / 6, bw * 0.32, c)
            p.end()

    def car(self, x: float, z: float, truck: bool) -> None:
        rng, p = self.rng, self.p
        s = self.f / z
        u, v = self.proj(x, 0, z)
        if truck:
            w, h = float(rng.uniform(2.3, 2.6)) * s, float(rng.uniform(3.0, 3.8)) * s
            p.begin(TRUCK)
            body = _jitter(rng, _CAR_COLORS[int(rng.integers(len(_CAR_COLORS)))], 20)
            boxes = ((220, 220, 220), (60, 90, 150), (180, 50, 40), (200, 180, 60))
            box = _jitter(rng, boxes[int(rng.integers(4))], 25)
            p.ellipse(u - w * 0.35, v - 0.25 * s, 0.5 * s, 0.5 * s, (25, 25, 25))
            p.ellipse(u + w * 0.35, v - 0.25 * s, 0.5 * s, 0.5 * s, (25, 25, 25))
            p.rect(u - w / 2, v - h, u + w / 2, v - 0.45 * s, box)
            p.rect(u - w / 2, v - 0.75 * s, u + w / 2, v - 0.35 * s, _shade(body, 0.6))   # bumper/chassis
            p.rect(u - w * 0.46, v - h * 0.98, u + w * 0.46, v - h * 0.93, _shade(box, 0.8))
            for k in (-0.3, 0.3):
                p.rect(u + k * w - 0.12 * s, v - 1.1 * s, u + k * w + 0.12 * s, v - 0.9 * s, (200, 30, 30))
            p.end()
            return
        w, h = float(rng.uniform(1.6, 1.95)) * s, float(rng.uniform(1.35, 1.6)) * s
        color = _jitter(rng, _CAR_COLORS[int(rng.integers(len(_CAR_COLORS)))], 25)
        p.begin(CAR)
        p.ellipse(u - w * 0.36, v - 0.2 * s, 0.2 * s, 0.22 * s, (20, 20, 20))
        p.ellipse(u + w * 0.36, v - 0.2 * s, 0.2 * s, 0.22 * s, (20, 20, 20))
        p.rect(u - w / 2, v - h * 0.55, u + w / 2, v - 0.18 * s, color)
        cabin = np.array([[u - w * 0.45, v - h * 0.55], [u + w * 0.45, v - h * 0.55],
                          [u + w * 0.36, v - h], [u - w * 0.36, v - h]])
        p.poly(cabin, _shade(color, 0.9))
        glass = np.array([[u - w * 0.39, v - h * 0.58], [u + w * 0.39, v - h * 0.58],
                          [u + w * 0.32, v - h * 0.95], [u - w * 0.32, v - h * 0.95]])
        p.poly(glass, _jitter(rng, (50, 60, 70), 20))
        for k in (-0.38, 0.38):   # rear lights
            p.rect(u + k * w - 0.1 * s, v - h * 0.5, u + k * w + 0.1 * s, v - h * 0.42, (210, 20, 20))
        p.rect(u - 0.25 * s, v - h * 0.36, u + 0.25 * s, v - h * 0.28, (230, 230, 220))   # plate
        p.end()

    def person(self, x: float, z: float) -> None:
        rng, p = self.rng, self.p
        s = self.f / z
        u, v = self.proj(x, 0, z)
        hgt = float(rng.uniform(1.5, 1.9)) * s
        top = _CLOTHES[int(rng.integers(len(_CLOTHES)))]
        legs = _CLOTHES[int(rng.integers(len(_CLOTHES)))]
        lw = max(6.0, 0.18 * s)
        p.begin(PERSON)
        stride = float(rng.uniform(0.0, 0.25)) * s
        p.line(u - 0.08 * s, v - hgt * 0.48, u - 0.08 * s - stride, v - lw / 2, legs, lw)
        p.line(u + 0.08 * s, v - hgt * 0.48, u + 0.08 * s + stride, v - lw / 2, legs, lw)
        torso = np.array([[u - 0.22 * s, v - hgt * 0.82], [u + 0.22 * s, v - hgt * 0.82],
                          [u + 0.18 * s, v - hgt * 0.45], [u - 0.18 * s, v - hgt * 0.45]])
        p.poly(torso, _jitter(rng, top, 20))
        p.line(u - 0.24 * s, v - hgt * 0.8, u - 0.3 * s, v - hgt * 0.5, _jitter(rng, top, 20), max(5.0, 0.13 * s))
        p.line(u + 0.24 * s, v - hgt * 0.8, u + 0.3 * s, v - hgt * 0.5, _jitter(rng, top, 20), max(5.0, 0.13 * s))
        p.circle(u, v - hgt * 0.91, max(4.0, 0.13 * s), _SKIN[int(rng.integers(len(_SKIN)))])
        p.end()

    def bicycle(self, x: float, z: float) -> None:
        rng, p = self.rng, self.p
        s = self.f / z
        u, v = self.proj(x, 0, z)
        r = 0.34 * s
        d = 0.55 * s * (1 if rng.random() < 0.5 else -1)
        tire = max(4.0, 0.12 * s)
        frame = _jitter(rng, _CAR_COLORS[int(rng.integers(len(_CAR_COLORS)))], 30)
        p.begin(BICYCLE)
        for cx in (u - d, u + d):
            p.circle(cx, v - r, r, (25, 25, 25))
            p.circle(cx, v - r, r - tire, _shade(frame, 0.5))
            p.circle(cx, v - r, r * 0.15, (180, 180, 180))
        t = max(4.0, 0.09 * s)
        seat = (u - d * 0.35, v - r * 2.6)
        crank = (u, v - r)
        head = (u + d * 0.7, v - r * 2.5)
        for a, b in ((seat, crank), (crank, (u + d, v - r)), (seat, head), (head, (u + d, v - r)),
                     (crank, (u - d, v - r)), (seat, (u - d, v - r))):
            p.line(a[0], a[1], b[0], b[1], frame, t)
        p.line(head[0] - d * 0.15, head[1] - r * 0.1, head[0] + d * 0.1, head[1] - r * 0.25, (30, 30, 30), t)
        p.end()

    def shadows(self) -> np.ndarray:
        """Cast shadows darken the image only; labels keep the class of the surface."""
        rng = self.rng
        shade = np.ones((self.h, self.w), np.float32)
        for _ in range(int(rng.integers(0, 4))):
            z0 = float(rng.uniform(5, 40))
            x0 = float(rng.uniform(-12, 4))
            q = self.ground_quad(x0, x0 + rng.uniform(3, 12), z0, z0 + rng.uniform(2, 15))
            cv2.fillPoly(shade, [np.round(q).astype(np.int32)], float(rng.uniform(0.5, 0.8)))
        return shade

    def render(self) -> tuple[np.ndarray, np.ndarray]:
        rng = self.rng
        self.sky()
        self.far_band()
        self.ground()
        shade = self.shadows()
        items: list[tuple[float, object]] = []
        self.side_structures(items)
        for _ in range(int(rng.integers(2, 7))):   # trees behind the sidewalk
            side = rng.choice([-1, 1])
            edge = self.road_half + self.walk_w[0 if side < 0 else 1]
            x, z = side * (edge - rng.uniform(0.3, 1.2)), float(rng.uniform(5, 40))
            items.append((z, lambda x=x, z=z: self.tree(x, z)))
        for _ in range(int(rng.integers(2, 7))):   # poles, signs, lights at the curb
            side = rng.choice([-1, 1])
            x, z = side * (self.road_half + rng.uniform(0.3, 1.0)), float(rng.uniform(5, 25))
            what = str(rng.choice(['pole', 'sign', 'sign', 'light', 'light']))
            items.append((z, lambda x=x, z=z, what=what: self.pole_with(x, z, what)))
        for _ in range(int(rng.integers(1, 7))):   # vehicles on the road
            lane_x = float(rng.uniform(-self.road_half + 1.2, self.road_half - 1.2))
            z = float(rng.uniform(6, 45))
            truck = bool(rng.random() < 0.3)
            items.append((z, lambda x=lane_x, z=z, t=truck: self.car(x, z, t)))
        for _ in range(int(rng.integers(1, 6))):   # pedestrians, mostly on sidewalks
            side = rng.choice([-1, 1])
            on_road = rng.random() < 0.2
            x = float(rng.uniform(-self.road_half, self.road_half)) if on_road else \
                side * (self.road_half + rng.uniform(0.4, 1.6))
            z = float(rng.uniform(4.5, 12))
            items.append((z, lambda x=x, z=z: self.person(x, z)))
        for _ in range(int(rng.integers(0, 4))):   # parked bicycles
            side = rng.choice([-1, 1])
            x, z = side * (self.road_half + rng.uniform(0.3, 1.4)), float(rng.uniform(4.5, 9))
            items.append((z, lambda x=x, z=z: self.bicycle(x, z)))
        for _z, draw in sorted(items, key=lambda t: -t[0]):   # far to near = occlusion order
            draw()  # type: ignore[operator]
        return self.finish(shade)

    def finish(self, shade: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rng = self.rng
        img = self.p.img.astype(np.float32)
        small = rng.normal(0.0, 1.0, (max(2, self.h // 16), max(2, self.w // 16))).astype(np.float32)
        blotch = cv2.resize(small, (self.w, self.h), interpolation=cv2.INTER_CUBIC)
        gain = float(rng.uniform(0.65, 1.25)) * (1.0 + float(rng.uniform(0.03, 0.1)) * blotch) * shade
        tint = np.array([rng.uniform(0.93, 1.07), 1.0, rng.uniform(0.93, 1.07)], np.float32)
        img *= gain[..., None] * tint
        img += rng.normal(0.0, float(rng.uniform(2, 8)), img.shape).astype(np.float32)
        if rng.random() < 0.3:
            img = cv2.GaussianBlur(img, (3, 3), 0)
        return np.clip(img, 0, 255).astype(np.uint8), self.p.lab


def _check_size(height: int, width: int) -> None:
    if not (isinstance(height, int) and isinstance(width, int) and 16 <= height <= 4096 and 16 <= width <= 4096):
        raise ConfigError(f'scene size {height}x{width} is invalid; use integers in [16, 4096], e.g. 256x512')


def generate_scene(seed: int, height: int, width: int,
                   camera: CameraModel | None = None) -> tuple[np.ndarray, np.ndarray]:
    """RGB uint8 ``HxWx3`` image and uint8 ``HxW`` trainId labels of scene ``seed`` (same seed, same bytes).

    ``camera`` fixes the intrinsics and horizon (as for a bag with CameraInfo); ``None`` varies them per seed.
    """
    _check_size(height, width)
    return _Scene(int(seed), height, width, camera, record=False).render()


def scene_objects(seed: int, height: int, width: int,
                  camera: CameraModel | None = None) -> tuple[np.ndarray, np.ndarray, list[SceneObject]]:
    """Like :func:`generate_scene` but also returns every drawn object with its full footprint, in draw order.

    Slower (one mask per object); meant for tests and inspection.
    """
    _check_size(height, width)
    scene = _Scene(int(seed), height, width, camera, record=True)
    rgb, lab = scene.render()
    return rgb, lab, scene.p.objects


def colorize(labels: np.ndarray) -> np.ndarray:
    """trainId map -> RGB image with the Cityscapes palette (ignore -> black)."""
    lut = np.zeros((256, 3), np.uint8)
    lut[:len(CITYSCAPES.colors)] = np.array(CITYSCAPES.colors, np.uint8)
    return lut[labels]
