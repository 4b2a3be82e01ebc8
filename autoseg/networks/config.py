"""Parse and check a plans network config (``plans["stages"][s]["network"]``) once, for every network.

Networks read the typed ``NetConfig`` instead of the raw dict so that a hand-edited plans file fails
here with the key's name rather than deep inside torch with a shape error.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from autoseg import AutosegError

WHERE = "plans network config"


def _fail(key: str, what: str) -> None:
    raise AutosegError(f"{WHERE}: key '{key}' {what}")


def _per_stage(cfg: dict, key: str, default: int, n: int) -> list[int]:
    """An int or a per-stage list of positive ints, expanded to one value per stage."""
    v = cfg.get(key, default)
    if isinstance(v, int) and not isinstance(v, bool):
        v = [v] * n
    if not (isinstance(v, list) and len(v) == n and all(isinstance(x, int) and not isinstance(x, bool)
                                                        and x > 0 for x in v)):
        _fail(key, f"must be a positive integer or a list of {n} positive integers, got {cfg.get(key)!r}")
    return list(v)


def _triples(cfg: dict, key: str, n: int) -> list[list[int]]:
    v = cfg.get(key)
    ok = isinstance(v, list) and len(v) == n and all(
        isinstance(t, (list, tuple)) and len(t) == 3
        and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in t) for t in v)
    if not ok:
        _fail(key, f"must be a list of {n} [z, y, x] positive-integer triples (one per stage), got {v!r}")
    return [list(t) for t in v]


@dataclass
class NetConfig:
    """Typed view of a network config; ``extra`` keeps keys a custom network may use."""

    features: list[int]
    kernel_sizes: list[list[int]]
    strides: list[list[int]]
    blocks: str = "plain"
    convs_per_stage: list[int] = field(default_factory=list)
    blocks_per_stage: list[int] = field(default_factory=list)
    deep_supervision_levels: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_stages(self) -> int:
        return len(self.features)


def parse_config(cfg: Any) -> NetConfig:
    """Validate a network config dict and fill defaults (convs_per_stage 2, all decoder levels supervised)."""
    if not isinstance(cfg, dict):
        raise AutosegError(f"{WHERE}: must be an object, got {type(cfg).__name__}")
    feats = cfg.get("features")
    if not (isinstance(feats, list) and feats and all(isinstance(f, int) and not isinstance(f, bool)
                                                       and f > 0 for f in feats)):
        _fail("features", f"must be a non-empty list of positive integers, got {feats!r}")
    n = len(feats)
    kernels = _triples(cfg, "kernel_sizes", n)
    strides = _triples(cfg, "strides", n)
    if strides[0] != [1, 1, 1]:
        _fail("strides", f"first stage must have stride [1, 1, 1] (full-resolution skip), got {strides[0]}")
    for i, k in enumerate(kernels):
        if any(x % 2 == 0 for x in k):
            _fail(f"kernel_sizes[{i}]", f"must hold odd sizes so 'same' padding keeps the shape, got {k}")
    blocks = cfg.get("blocks", "plain")
    if blocks not in ("plain", "residual"):
        _fail("blocks", f"must be 'plain' or 'residual', got {blocks!r}")
    convs = _per_stage(cfg, "convs_per_stage", 2, n)
    res_blocks = _per_stage(cfg, "blocks_per_stage", 1, n) if "blocks_per_stage" in cfg \
        else [max(1, c // 2) for c in convs]
    max_levels = max(1, n - 1)
    levels = cfg.get("deep_supervision_levels", max_levels)
    if not (isinstance(levels, int) and not isinstance(levels, bool) and 1 <= levels <= max_levels):
        _fail("deep_supervision_levels", f"must be an integer in [1, {max_levels}], got {levels!r}")
    known = {"class", "features", "kernel_sizes", "strides", "blocks", "convs_per_stage",
             "blocks_per_stage", "deep_supervision_levels"}
    return NetConfig(list(feats), kernels, strides, blocks, convs, res_blocks, levels,
                     {k: v for k, v in cfg.items() if k not in known})


def scales_from_strides(strides: list[list[int]], levels: int) -> list[list[float]]:
    """Scale of the output at encoder level l relative to the input: 1 / prod(strides[:l+1])."""
    out, acc = [], [1, 1, 1]
    for s in strides[:levels]:
        acc = [a * b for a, b in zip(acc, s)]
        out.append([1.0 / a for a in acc])
    return out
