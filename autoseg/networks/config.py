"""Parse and check a plans network config (``plans["stages"][s]["network"]``) once, for every network.

Networks read the typed ``NetConfig`` instead of the raw dict so that a hand-edited plans file fails
here with the key's name rather than deep inside torch with a shape error. The checks are the plans'
own (``autoseg.plans_schema.NetworkModel``): one validator for both.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from autoseg import AutosegError
from autoseg.plans_schema import NetworkModel, check

WHERE = "plans network config"


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
    """Validate a network config dict (the plans' one validator) and fill defaults (convs_per_stage 2,
    all decoder levels supervised)."""
    if not isinstance(cfg, dict):
        raise AutosegError(f"{WHERE}: must be an object, got {type(cfg).__name__}")
    check(NetworkModel, {"class": "network", **cfg}, WHERE)
    n = len(cfg["features"])

    def per_stage(key: str, default: int) -> list[int]:
        v = cfg.get(key, default)
        return [v] * n if isinstance(v, int) else list(v)

    convs = per_stage("convs_per_stage", 2)
    res_blocks = per_stage("blocks_per_stage", 1) if "blocks_per_stage" in cfg else [max(1, c // 2) for c in convs]
    known = {"class", "features", "kernel_sizes", "strides", "blocks", "convs_per_stage",
             "blocks_per_stage", "deep_supervision_levels"}
    return NetConfig(list(cfg["features"]), [list(k) for k in cfg["kernel_sizes"]], [list(s) for s in cfg["strides"]],
                     cfg.get("blocks", "plain"), convs, res_blocks, cfg.get("deep_supervision_levels", max(1, n - 1)),
                     {k: v for k, v in cfg.items() if k not in known})


def scales_from_strides(strides: list[list[int]], levels: int) -> list[list[float]]:
    """Scale of the output at encoder level l relative to the input: 1 / prod(strides[:l+1])."""
    out, acc = [], [1, 1, 1]
    for s in strides[:levels]:
        acc = [a * b for a, b in zip(acc, s)]
        out.append([1.0 / a for a in acc])
    return out
