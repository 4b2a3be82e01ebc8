"""Cohort-scale inference: deterministic shards of the sorted cases, for scheduler arrays
(``--num-parts N --part-id K``) and for ``torchrun`` ranks (each rank one shard on its own device).

A shard is the round-robin slice ``sorted(cases)[K::N]``: the same on every machine and every rerun, so
``--continue`` after a killed rank finds exactly that rank's missing cases. Under torchrun the ranks
talk only once, at the end, over gloo (CPU objects, whatever the device), to hand rank 0 the summary.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Iterator

from autoseg.utils import shard

log = logging.getLogger(__name__)
# Ranks that finish early wait for the slowest shard at the final gather: allow a long cohort.
GATHER_TIMEOUT = timedelta(hours=72)


@dataclass
class Part:
    """Which shard this process predicts (``part_id`` of ``num_parts``), the scheduler part it belongs to
    (``array_part`` of ``array_parts``: the same cases whatever the number of ranks), and its rank."""

    num_parts: int = 1
    part_id: int = 0
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    array_parts: int = 1
    array_part: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device: str) -> str:
        """Each torchrun rank on its own GPU (LOCAL_RANK); CPU ranks share the CPU."""
        if self.world_size > 1 and device in ("auto", "cuda"):
            import torch

            if torch.cuda.is_available():
                return f"cuda:{self.local_rank % torch.cuda.device_count()}"
        return device

    def gather(self, summary: dict) -> list[dict]:
        """Every rank's summary on rank 0 (an empty list elsewhere); this process's alone without torchrun."""
        if self.world_size == 1:
            return [summary]
        import torch.distributed as dist

        out: list = [None] * self.world_size
        dist.all_gather_object(out, summary)
        return out if self.is_main else []


@contextlib.contextmanager
def cohort_part(num_parts: int = 1, part_id: int = 0) -> Iterator[Part]:
    """The shard of this process: ``--num-parts/--part-id`` split first, then torchrun's ranks split that
    part again: rank r of W takes every W-th case of part K of N, i.e. part K + N*r of N*W, so a
    scheduler part holds the same cases whatever number of GPUs its job gets."""
    shard([], num_parts, part_id)  # checks the part numbers
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        yield Part(num_parts, part_id, array_parts=num_parts, array_part=part_id)
        return
    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    created = not dist.is_initialized()
    if created:
        dist.init_process_group(backend="gloo", timeout=GATHER_TIMEOUT)
    part = Part(num_parts * world, part_id + num_parts * rank, rank, world, local, num_parts, part_id)
    log.info("inference rank %d of %d: part %d of %d", rank, world, part.part_id, part.num_parts)
    try:
        yield part
    finally:
        if created:
            dist.destroy_process_group()


def summary_name(part: Part) -> str:
    """One summary file per scheduler part (torchrun ranks share their part's file, written by rank 0)."""
    n, k = part.array_parts, part.array_part
    return "inference_summary.json" if n == 1 else f"inference_summary_part{k}of{n}.json"


def report(part: Part, predictor, failures: list[tuple[str, str]], out_dir: Path, profile: bool) -> dict | None:
    """Gather every rank's written cases, failures and profiles on rank 0, which returns the summary and
    writes it into ``out_dir`` when the cases were split (and ``profile.json`` when profiling); other
    ranks return None."""
    from autoseg.utils import save_json

    mine = {"rank": part.rank, "part": part.part_id, "device": str(predictor.device),
            "written": sorted(predictor.written), "failed": [list(f) for f in failures],
            "profiles": predictor.profiles}
    ranks = part.gather(mine)
    if not part.is_main:
        return None
    if profile and any(r["profiles"] for r in ranks):
        save_json({"device": ", ".join(sorted({r["device"] for r in ranks})),
                   "cases": {k: v for r in ranks for k, v in r["profiles"].items()}}, out_dir / "profile.json")
    summary = {"num_parts": part.num_parts, "world_size": part.world_size,
               "written": sum(len(r["written"]) for r in ranks),
               "failed": [f for r in ranks for f in r["failed"]],
               "ranks": [{k: v for k, v in r.items() if k != "profiles"} for r in ranks]}
    if part.num_parts > 1:  # a plain run leaves only masks in the output folder (FLARE reads it as is)
        save_json(summary, out_dir / summary_name(part))
    return summary
