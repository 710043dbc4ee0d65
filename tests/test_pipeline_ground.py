"""Ground projection against analytic flat-ground geometry: v = cy + fy * tan(atan(h / d) - pitch)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from evit_ros.config import GridConfig, MountConfig
from evit_ros.errors import ConfigError
from evit_ros.pipeline.ground import FREE, OCCUPIED, UNKNOWN, GroundProjector

CALIB_HW = (480, 640)
FX = FY = 500.0
CX, CY = 319.5, 239.5
K = [FX, 0, CX, 0, FY, CY, 0, 0, 1]
GRID = GridConfig(resolution_m=0.1, length_m=40.0, width_m=20.0)


def _v(d: float, h: float, pitch_deg: float) -> float:
    return CY + FY * math.tan(math.atan(h / d) - math.radians(pitch_deg))


@pytest.mark.parametrize('height, pitch', [(1.5, 0.0), (1.5, 10.0), (3.0, -2.0)])
def test_rows_and_distances_both_ways(height: float, pitch: float) -> None:
    proj = GroundProjector(K, CALIB_HW, CALIB_HW, MountConfig(height_m=height, pitch_deg=pitch), GRID)
    for d in (4.0, 8.0, 15.0, 30.0):
        u, v, front = proj.ground_to_image(np.array([d]), np.array([0.0]))
        assert front[0]
        assert u[0] == pytest.approx(CX, abs=1e-9) and v[0] == pytest.approx(_v(d, height, pitch), abs=1e-6)
        x, y, ok = proj.image_to_ground(np.array([CX]), np.array([_v(d, height, pitch)]))
        assert ok[0] and x[0] == pytest.approx(d, rel=1e-9) and y[0] == pytest.approx(0.0, abs=1e-9)
    # lateral: a point y metres to the left appears left of the centre, u = cx - fx * y / depth
    u, v, _ = proj.ground_to_image(np.array([10.0]), np.array([2.0]))
    depth = 10.0 * math.cos(math.radians(pitch)) + height * math.sin(math.radians(pitch))
    assert u[0] == pytest.approx(CX - FX * 2.0 / depth, abs=1e-6)
    # the horizon row and everything above it never hits the ground
    horizon = CY - FY * math.tan(math.radians(pitch))
    assert not proj.image_to_ground(np.array([CX, 0.0]), np.array([horizon - 1.0, horizon - 5.0]))[2].any()


def test_yaw_and_offset() -> None:
    yaw, d, h, p = 25.0, 12.0, 1.4, 6.0
    proj = GroundProjector(K, CALIB_HW, CALIB_HW,
                           MountConfig(height_m=h, pitch_deg=p, yaw_deg=yaw, x_m=1.2, y_m=-0.4), GRID)
    gx = 1.2 + d * math.cos(math.radians(yaw))
    gy = -0.4 + d * math.sin(math.radians(yaw))
    u, v, _ = proj.ground_to_image(np.array([gx]), np.array([gy]))
    assert u[0] == pytest.approx(CX, abs=1e-6) and v[0] == pytest.approx(_v(d, h, p), abs=1e-6)
    x, y, ok = proj.image_to_ground(np.array([CX]), np.array([_v(d, h, p)]))
    assert ok[0] and x[0] == pytest.approx(gx) and y[0] == pytest.approx(gy)


def test_roll_tilts_the_horizon() -> None:
    proj = GroundProjector(K, CALIB_HW, CALIB_HW, MountConfig(height_m=1.5, roll_deg=10.0), GRID)
    # a point straight ahead stays on the centre; points left/right move up/down by the roll
    u, v, _ = proj.ground_to_image(np.array([10.0, 10.0]), np.array([3.0, -3.0]))
    assert abs(v[0] - v[1]) > 10 and proj.ground_to_image(np.array([10.0]), np.array([0.0]))[0][0] != CX
    x, y, ok = proj.image_to_ground(u, v)
    np.testing.assert_allclose(np.column_stack([x, y]), [[10.0, 3.0], [10.0, -3.0]], atol=1e-9)


def test_grid_layout_and_projection() -> None:
    h, p = 1.5, 8.0
    proj = GroundProjector(K, CALIB_HW, CALIB_HW, MountConfig(height_m=h, pitch_deg=p), GRID)
    assert proj.shape == (200, 400) and proj.origin_xy == (0.0, -10.0)
    # free ground up to 10 m: rows below the image row of the 10 m line are in the group
    v10 = _v(10.0, h, p)
    mask = np.zeros(CALIB_HW, np.uint8)
    mask[int(math.ceil(v10)):] = 255
    grid = proj.project(mask)
    assert grid.dtype == np.int8 and grid.shape == (200, 400)
    centre_row = 100  # y = -10 + 100.5 * 0.1 = 0.05 m
    xs = (np.arange(400) + 0.5) * 0.1
    row = grid[centre_row]
    seen = row != UNKNOWN
    assert np.all(row[(xs < 9.8) & seen] == FREE) and np.all(row[(xs > 10.2) & seen] == OCCUPIED)
    # near the car the ground is below the image (unknown); far cells stay visible up to the grid end
    near = _v(0.5, h, p) > CALIB_HW[0]
    assert near and row[0] == UNKNOWN and row[-1] == OCCUPIED
    # a cell far to the side is out of view
    assert grid[0, 30] == UNKNOWN
    assert set(np.unique(grid)) <= {FREE, OCCUPIED, UNKNOWN}
    # boundary: every column's first free row is at v10 -> points at x = distance of that row
    rows = np.full(CALIB_HW[1], int(math.ceil(v10)))
    rows[:10] = CALIB_HW[0]  # no free space: skipped
    pts = proj.boundary_points(rows)
    d_row = h / math.tan(math.radians(p) + math.atan((math.ceil(v10) - CY) / FY))
    assert pts.shape == (CALIB_HW[1] - 10, 2)
    np.testing.assert_allclose(pts[:, 0], d_row, rtol=1e-9)
    assert pts[0, 1] > 0 > pts[-1, 1]  # left image columns are to the left (+y)
    above = np.zeros(CALIB_HW[1], int)  # row 0 is above the horizon (at row ~169 for this pitch)
    assert proj.boundary_points(above).shape == (0, 2)


def test_scaled_image_matches_calibration() -> None:
    mount = MountConfig(height_m=1.5, pitch_deg=5.0)
    full = GroundProjector(K, CALIB_HW, CALIB_HW, mount, GRID)
    half = GroundProjector(K, CALIB_HW, (240, 320), mount, GRID)
    uf, vf, _ = full.ground_to_image(np.array([7.0]), np.array([1.0]))
    uh, vh, _ = half.ground_to_image(np.array([7.0]), np.array([1.0]))
    assert uh[0] == pytest.approx((uf[0] + 0.5) / 2 - 0.5) and vh[0] == pytest.approx((vf[0] + 0.5) / 2 - 0.5)
    with pytest.raises(ConfigError):
        half.project(np.zeros(CALIB_HW, np.uint8))
    with pytest.raises(ConfigError):
        GroundProjector([0] * 9, CALIB_HW, CALIB_HW, mount, GRID)
