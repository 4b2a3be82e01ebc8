"""Surface distances between two binary masks, as the surface-distance method of Nikolov et al. defines them.

The surface of a mask is made of surface elements ("surfels") living on the grid of voxel corners: the
corner between voxels ``i-1`` and ``i`` along every axis looks at its 2x2x2 neighbourhood, and when that
neighbourhood is mixed (some voxels in, some out) the corner carries the marching-cubes triangles of
that configuration. A surfel's weight is the area of those triangles in mm^2 on the anisotropic grid,
and its distance to the other surface is the Euclidean distance (mm) to the nearest surfel corner of
the other mask. NSD and HD95 are area-weighted statistics of those distances, so a thick-slice scan
does not over-count the many small in-plane surfels against the few large through-plane ones.

Only the two masks' bounding box is ever touched. Nearest-corner distances are exact either way:
a k-d tree over the other mask's surfel corners when surfaces are sparse in the box (the usual
case, and much cheaper than a distance transform of the box), or the Euclidean distance transform
of the box when they are dense.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np

# A corner's 8 neighbours, as (d0, d1, d2) offsets in {0, 1}, carry bit 7 - (4*d0 + 2*d1 + d2):
# the voxel at offset (0, 0, 0) (the "lower" one on every axis) is bit 7, (1, 1, 1) is bit 0.
_FULL = 255


@lru_cache(maxsize=1)
def _unit_triangles() -> tuple[np.ndarray, ...]:
    """Marching-cubes triangles (vertices in voxel units) for each of the 256 neighbourhood codes.

    Every configuration is triangulated from its minority side (a code with more than four voxels
    inside uses the triangles of its complement), so a surface and its complement have the same
    area. That is what the reference method's lookup table encodes: checked against it, the areas
    agree for all 256 codes at anisotropic spacings.
    """
    from skimage import measure

    bits = 2 ** (7 - np.arange(8).reshape(2, 2, 2))
    tris: list[np.ndarray] = [np.zeros((0, 3, 3))]
    for code in range(1, _FULL):
        side = code if bin(code).count("1") <= 4 else _FULL - code
        cube = ((side & bits) > 0).astype(np.float64)
        verts, faces = measure.marching_cubes(cube, 0.5, method="lorensen")[:2]
        tris.append(verts.astype(np.float64)[faces])
    tris.append(np.zeros((0, 3, 3)))
    return tuple(tris)


@lru_cache(maxsize=64)
def surfel_area_table(spacing: tuple[float, float, float]) -> np.ndarray:
    """Area in mm^2 of the surface inside one corner neighbourhood, for each of the 256 codes."""
    sp = np.asarray(spacing, dtype=np.float64)
    table = np.zeros(256)
    for code, tri in enumerate(_unit_triangles()):
        if len(tri):
            v = tri * sp
            table[code] = 0.5 * np.linalg.norm(np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]), axis=1).sum()
    table.setflags(write=False)
    return table


def neighbour_codes(mask: np.ndarray) -> np.ndarray:
    """Code (0..255) of every voxel corner of ``mask``; shape is ``mask.shape + 1`` on every axis.

    Outside the array counts as background, so objects touching the array border are closed there.
    Built separably (pairs along x, then y, then z) to stay a handful of passes over uint8 memory.
    """
    p = np.pad(mask.astype(np.uint8, copy=False), 1)
    a = (p[:, :, :-1] << 1) | p[:, :, 1:]
    b = (a[:, :-1, :] << 2) | a[:, 1:, :]
    return (b[:-1] << 4) | b[1:]


@dataclass
class Surface:
    """Surfel corners of one mask: integer corner coordinates (N, 3) and their areas (N,) in mm^2."""

    points: np.ndarray
    areas: np.ndarray

    @property
    def total_area(self) -> float:
        return float(self.areas.sum())


def mask_surface(mask: np.ndarray, spacing: Sequence[float]) -> Surface:
    """Surfels of a boolean 3D mask (corner coordinates are shifted by +1/2 voxel from voxel indices)."""
    codes = neighbour_codes(mask)
    border = (codes != 0) & (codes != _FULL)
    pts = np.argwhere(border)
    areas = surfel_area_table(tuple(float(s) for s in spacing))[codes[border]]
    return Surface(pts.astype(np.int32), areas)


def _exact_distance(delta: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """sqrt(sum((delta_i * s_i)^2)) summed in axis order, the same float operations as scipy's EDT."""
    d = delta.astype(np.float64) * spacing
    d *= d
    return np.sqrt((d[:, 0] + d[:, 1]) + d[:, 2])


def nearest_distances(query: np.ndarray, target: np.ndarray, spacing: Sequence[float],
                      grid_shape: Sequence[int] | None = None, method: str = "auto") -> np.ndarray:
    """Distance (mm) from every query corner to the nearest target corner; ``inf`` if target is empty.

    ``method``: "kdtree", "edt" (feature transform over ``grid_shape``, which must hold both point
    sets) or "auto": measured on one core, a k-d tree costs ~0.13 us per target point to build and
    ~1.2 us per query, the feature transform ~0.15 us per grid voxel, so the tree wins unless the
    surfaces fill the box. Both give the same nearest distance, computed the same way.
    """
    sp = np.asarray(spacing, dtype=np.float64)
    if len(query) == 0:
        return np.zeros(0)
    if len(target) == 0:
        return np.full(len(query), np.inf)
    if method == "auto":
        dense = grid_shape is not None and len(target) + 8 * len(query) > int(np.prod(grid_shape))
        method = "edt" if dense else "kdtree"
    if method == "edt":
        from scipy import ndimage

        if grid_shape is None:
            raise ValueError("method='edt' needs grid_shape")
        feature = np.ones(tuple(int(s) for s in grid_shape), dtype=bool)
        feature[tuple(target.T)] = False
        # indices only: distances are needed at the query corners, not at every voxel of the box
        ft = ndimage.distance_transform_edt(feature, sampling=sp, return_distances=False, return_indices=True)
        nearest = ft[(slice(None), *query.T)].T
    elif method == "kdtree":
        from scipy.spatial import cKDTree

        tree = cKDTree(target * sp, leafsize=32, balanced_tree=False, compact_nodes=False)
        nearest = target[tree.query(query * sp, k=1)[1]]
    else:
        raise ValueError(f"unknown method {method!r}")
    return _exact_distance(nearest - query, sp)


@dataclass
class SurfaceDistances:
    """Distances from each surfel of one surface to the other, with the surfels' areas."""

    dist_gt_to_pred: np.ndarray
    area_gt: np.ndarray
    dist_pred_to_gt: np.ndarray
    area_pred: np.ndarray


def surface_distances(gt: np.ndarray, pred: np.ndarray, spacing: Sequence[float],
                      method: str = "auto") -> SurfaceDistances:
    """Surfel distances both ways between two boolean masks of the same shape (crop them first)."""
    if gt.shape != pred.shape or gt.ndim != 3:
        raise ValueError(f"masks must be 3D and of one shape, got {gt.shape} and {pred.shape}")
    sg, sp_ = mask_surface(gt, spacing), mask_surface(pred, spacing)
    grid = tuple(s + 1 for s in gt.shape)
    return SurfaceDistances(
        nearest_distances(sg.points, sp_.points, spacing, grid, method=method), sg.areas,
        nearest_distances(sp_.points, sg.points, spacing, grid, method=method), sp_.areas)


def surface_dice(sd: SurfaceDistances, tolerance_mm: float) -> float:
    """Normalised surface dice: area of both surfaces within ``tolerance_mm`` of the other / total area."""
    total = sd.area_gt.sum() + sd.area_pred.sum()
    if total == 0:
        return float("nan")
    inside = (sd.area_gt[sd.dist_gt_to_pred <= tolerance_mm].sum()
              + sd.area_pred[sd.dist_pred_to_gt <= tolerance_mm].sum())
    return float(inside / total)


def _directed_percentile(dist: np.ndarray, area: np.ndarray, percent: float) -> float:
    if len(dist) == 0:
        return float("inf")
    order = np.lexsort((area, dist))  # by distance, ties by area, as the reference sorts
    d, a = dist[order], area[order]
    cum = np.cumsum(a) / a.sum()
    idx = int(np.searchsorted(cum, percent / 100.0))
    return float(d[min(idx, len(d) - 1)])


def robust_hausdorff(sd: SurfaceDistances, percent: float = 95.0) -> float:
    """Area-weighted ``percent``-th percentile of surface distances, the larger of the two directions."""
    return max(_directed_percentile(sd.dist_gt_to_pred, sd.area_gt, percent),
               _directed_percentile(sd.dist_pred_to_gt, sd.area_pred, percent))
