"""Flat-ground projection of group masks into a ``nav_msgs/OccupancyGrid``-shaped int8 grid.

Frames: vehicle (``grid.frame_id``) x forward, y left, z up; the ground is z = 0. The camera sits at
``(mount.x_m, mount.y_m, mount.height_m)``; with zero angles it looks along +x. Its orientation is
``Rz(yaw) @ Ry(pitch) @ Rx(roll)`` in the vehicle frame, so positive pitch looks down, positive yaw looks left
and positive roll turns the image clockwise as seen from behind the camera. Optical frame: z forward,
x right, y down (REP 103).

Grid layout (as ``nav_msgs/OccupancyGrid``): ``shape = (rows, cols)``, row-major; column index c runs along
vehicle x (``x = origin_x + (c + 0.5) * res``, 0..length_m), row index r along vehicle y
(``y = origin_y + (r + 0.5) * res``, -width/2..+width/2); ``origin_xy`` is the lower-left corner of cell
(0, 0): ``(0, -width_m / 2)``. ``info.width = cols``, ``info.height = rows``, identity orientation.

Cells: 0 free (ground point images onto a group pixel), 100 observed and not in the group, -1 unknown (the
cell centre is behind the camera, outside the image, or the grid does not reach it).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from evit_ros.config import GridConfig, MountConfig
from evit_ros.errors import ConfigError

FREE, OCCUPIED, UNKNOWN = 0, 100, -1
_UNSEEN = 128  # remap border value for cells outside the image; mapped to UNKNOWN


def _rot_x(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _rot_y(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rot_z(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


# optical axes (x right, y down, z forward) expressed in the vehicle frame at zero mount angles
_OPTICAL_TO_BODY = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def camera_rotation(mount: MountConfig) -> np.ndarray:
    """3x3 rotation taking optical-frame vectors to the vehicle frame."""
    r = _rot_z(math.radians(mount.yaw_deg)) @ _rot_y(math.radians(mount.pitch_deg)) @ _rot_x(
        math.radians(mount.roll_deg))
    return r @ _OPTICAL_TO_BODY


def scale_intrinsics(K: np.ndarray | Sequence[float], calib_hw: tuple[int, int],
                     image_hw: tuple[int, int]) -> np.ndarray:
    """K of a ``calib_hw`` image -> K of the same view resized to ``image_hw`` (pixel-centre convention)."""
    k = np.asarray(K, dtype=np.float64).reshape(3, 3).copy()
    sy, sx = image_hw[0] / calib_hw[0], image_hw[1] / calib_hw[1]
    k[0, 0] *= sx
    k[0, 1] *= sx
    k[0, 2] = (k[0, 2] + 0.5) * sx - 0.5
    k[1, 1] *= sy
    k[1, 2] = (k[1, 2] + 0.5) * sy - 0.5
    return k


class GroundProjector:
    """Image <-> flat-ground geometry for one camera configuration, with a precomputed cell -> pixel map."""

    def __init__(self, K: np.ndarray | Sequence[float], calib_hw: tuple[int, int], image_hw: tuple[int, int],
                 mount: MountConfig, grid: GridConfig) -> None:
        k = np.asarray(K, dtype=np.float64).reshape(-1)
        if k.size != 9 or not np.all(np.isfinite(k)) or k[0] <= 0 or k[4] <= 0:
            raise ConfigError(f'camera matrix K={k.tolist()} is not a valid pinhole matrix; use CameraInfo.k '
                              '(9 values, fx and fy > 0)')
        if min(calib_hw) <= 0 or min(image_hw) <= 0:
            raise ConfigError(f'calib_hw={calib_hw} / image_hw={image_hw} must be positive; use CameraInfo '
                              'height/width and the mask size')
        self.image_hw = (int(image_hw[0]), int(image_hw[1]))
        self.K = scale_intrinsics(k, calib_hw, self.image_hw)
        self.K_inv = np.linalg.inv(self.K)
        self.mount = mount
        self.grid = grid
        self.R = camera_rotation(mount)                         # optical -> vehicle
        self.C = np.array([mount.x_m, mount.y_m, mount.height_m])
        # ground (X, Y, 1) -> image homogeneous pixel: K R^T [e1 e2 -C]
        self.H_ground_to_image = self.K @ self.R.T @ np.column_stack([[1.0, 0, 0], [0, 1.0, 0], -self.C])
        rows = max(1, int(round(grid.width_m / grid.resolution_m)))
        cols = max(1, int(round(grid.length_m / grid.resolution_m)))
        self.shape = (rows, cols)
        self.origin_xy = (0.0, -rows * grid.resolution_m / 2.0)
        self.resolution = grid.resolution_m
        xs = self.origin_xy[0] + (np.arange(cols) + 0.5) * grid.resolution_m
        ys = self.origin_xy[1] + (np.arange(rows) + 0.5) * grid.resolution_m
        gx, gy = np.meshgrid(xs, ys)
        u, v, valid = self.ground_to_image(gx, gy)
        h, w = self.image_hw
        valid &= (u > -0.5) & (u < w - 0.5) & (v > -0.5) & (v < h - 0.5)
        self._map_x = np.where(valid, u, -10.0).astype(np.float32)
        self._map_y = np.where(valid, v, -10.0).astype(np.float32)
        self._lut = np.full(256, UNKNOWN, np.int8)
        self._lut[0] = OCCUPIED
        self._lut[255] = FREE
        self._lut_u8 = self._lut.view(np.uint8).copy()
        self._sampled = np.empty(self.shape, np.uint8)
        self.observed_cells = int(valid.sum())

    def ground_to_image(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Vehicle-frame ground points -> pixel (u, v) and whether the point is in front of the camera."""
        x, y = np.asarray(x, float), np.asarray(y, float)
        hmat = self.H_ground_to_image
        pu = hmat[0, 0] * x + hmat[0, 1] * y + hmat[0, 2]
        pv = hmat[1, 0] * x + hmat[1, 1] * y + hmat[1, 2]
        pw = hmat[2, 0] * x + hmat[2, 1] * y + hmat[2, 2]   # depth along the optical axis
        front = pw > 1e-6
        safe = np.where(front, pw, 1.0)
        return pu / safe, pv / safe, front

    def image_to_ground(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pixels -> vehicle-frame ground (x, y) and whether the ray hits the ground (below the horizon)."""
        u, v = np.asarray(u, float), np.asarray(v, float)
        rays_cam = self.K_inv @ np.stack([u.ravel(), v.ravel(), np.ones(u.size)])
        rays = self.R @ rays_cam
        down = rays[2] < -1e-9
        t = np.where(down, -self.C[2] / np.where(down, rays[2], -1.0), np.nan)
        x = (self.C[0] + t * rays[0]).reshape(u.shape)
        y = (self.C[1] + t * rays[1]).reshape(u.shape)
        return x, y, down.reshape(u.shape)

    def project(self, group_mask: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """0/255 group mask at ``image_hw`` -> int8 grid ``shape`` (0 free, 100 occupied, -1 unknown)."""
        if group_mask.shape[:2] != self.image_hw:
            raise ConfigError(f'mask is {group_mask.shape[:2]}, the projector was built for {self.image_hw}; '
                              'rebuild it for this mask resolution')
        cv2.remap(group_mask, self._map_x, self._map_y, cv2.INTER_NEAREST, dst=self._sampled,
                  borderMode=cv2.BORDER_CONSTANT, borderValue=_UNSEEN)
        if out is None:
            out = np.empty(self.shape, np.int8)
        res = cv2.LUT(self._sampled, self._lut_u8, dst=out.view(np.uint8))
        if not np.shares_memory(res, out):
            np.copyto(out, res.view(np.int8))
        return out

    def boundary_points(self, boundary_rows: np.ndarray) -> np.ndarray:
        """Free-space boundary (``freespace_boundary`` rows, one per mask column) -> ``(N, 2)`` ground (x, y).

        Columns without free space (row == H) or whose boundary row is at or above the horizon are skipped.
        """
        rows = np.asarray(boundary_rows)
        h, w = self.image_hw
        if rows.shape != (w,):
            raise ConfigError(f'boundary has {rows.shape} entries; expected one per mask column ({w})')
        cols = np.nonzero(rows < h)[0]
        x, y, ok = self.image_to_ground(cols.astype(float), rows[cols].astype(float))
        return np.column_stack([x[ok], y[ok]])
