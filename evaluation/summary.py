"""Aggregate per-case metrics into summary.json's statistics and a readable table."""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from autoseg.evaluation.metrics import METRIC_KEYS


HD95_CONVENTION = ("HD95 is undefined where exactly one of GT and prediction is empty; such cases are left out "
                   "of the HD95 mean and counted in n_undefined (both empty: 0 mm). DSC and NSD count them as 0.")


def _stats(values: list[float]) -> dict[str, float | int | None]:
    """mean/std/median over the defined values; undefined ones (NaN HD95) are counted, not averaged."""
    arr = np.asarray(values, dtype=np.float64)
    ok = arr[np.isfinite(arr)]
    if len(ok) == 0:
        return {"mean": None, "std": None, "median": None, "n": 0, "n_undefined": int(len(arr))}
    return {"mean": float(ok.mean()), "std": float(ok.std()), "median": float(np.median(ok)),
            "n": int(len(ok)), "n_undefined": int(len(arr) - len(ok))}


def summarise(per_case: Mapping[str, Mapping[int, Mapping[str, float]]], names: Mapping[int, str],
              tolerances_mm: Mapping[int, float], preset: str) -> dict:
    """summary.json content: per-class statistics, their mean over foreground classes, per-case means."""
    per_class: dict[str, dict] = {}
    for v, name in sorted(names.items()):
        entry: dict = {"label": v, "tolerance_mm": tolerances_mm[v]}
        for k in METRIC_KEYS:
            entry[k] = _stats([res[v][k] for res in per_case.values() if v in res])
        per_class[name] = entry
    mean = {}
    for k in ("dsc", "nsd", "hd95"):
        means = [c[k]["mean"] for c in per_class.values() if c[k]["mean"] is not None]
        mean[k] = float(np.mean(means)) if means else None
    case_means = {}
    for cid, res in per_case.items():
        case_means[cid] = {k: _finite_mean([res[v][k] for v in res]) for k in ("dsc", "nsd", "hd95")}
    return {"tolerances": preset, "labels": {n: v for v, n in sorted(names.items())},
            "num_cases": len(per_case), "per_class": per_class, "mean": mean, "per_case_mean": case_means,
            "hd95_convention": HD95_CONVENTION}


def _finite_mean(values: list[float]) -> float | None:
    ok = [x for x in values if math.isfinite(x)]
    return float(np.mean(ok)) if ok else None


def _cell(stat: Mapping, digits: int) -> str:
    if stat["mean"] is None:
        return "n/a"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def _fmt(x: float | None, digits: int) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _align(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(s.ljust(w) if i == 0 else s.rjust(w) for i, (s, w) in enumerate(zip(r, widths))).rstrip()
            for r in rows]


def format_summary_table(summary: Mapping) -> str:
    """Plain-text table of per-class mean ± std (HD95 in mm, with how many cases had it undefined)."""
    rows = [("class", "label", "tol mm", "DSC", "NSD", "HD95 mm", "undef")]
    for name, c in summary["per_class"].items():
        rows.append((name, str(c["label"]), f"{c['tolerance_mm']:g}", _cell(c["dsc"], 4), _cell(c["nsd"], 4),
                     _cell(c["hd95"], 2), str(c["hd95"]["n_undefined"])))
    m = summary["mean"]
    rows.append(("mean", "", "", _fmt(m["dsc"], 4), _fmt(m["nsd"], 4), _fmt(m["hd95"], 2), ""))
    lines = _align(rows)
    sep = "-" * len(lines[0])
    out = [lines[0], sep, *lines[1:-1], sep, lines[-1],
           f"{summary['num_cases']} case(s) scored, tolerances {summary['tolerances']}"]
    for key, what in (("missing_predictions", "without prediction"), ("missing_ground_truth", "without ground truth")):
        ids = summary.get(key) or []
        if ids:
            out.append(f"{len(ids)} case(s) {what}: {', '.join(ids[:10])}" + (" ..." if len(ids) > 10 else ""))
    for cid, err in (summary.get("failed") or {}).items():
        out.append(f"failed {cid}: {err}")
    empty = summary.get("scored_as_empty") or []
    if empty:
        out.append(f"{len(empty)} case(s) without a usable prediction scored as empty (0 where the GT has the "
                   f"class) and included in the means: {', '.join(empty[:10])}" + (" ..." if len(empty) > 10 else ""))
    out.append("HD95: mean over cases where it is defined; 'undef' counts cases with exactly one side empty")
    out.extend(f"WARNING: {w}" for w in summary.get("tolerance_warnings") or [])
    return "\n".join(out)
