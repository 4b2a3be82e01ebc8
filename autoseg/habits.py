"""nnU-Net v2 users type nnU-Net's argument order from habit; instead of a bare usage error, say what
the autoseg equivalent is. Only calls that autoseg's own parser would reject are recognised."""
from __future__ import annotations

import re
from typing import Sequence

_ID = re.compile(r"^(\d+|(Dataset|Task)\d+_\w+)$")
_CONFIGS = ("2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres")


def _positionals(args: Sequence[str], with_value: Sequence[str] = ()) -> list[str]:
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a.startswith("-"):
            skip = a in with_value
        else:
            out.append(a)
    return out


def _flag(args: Sequence[str], *names: str) -> str | None:
    for i, a in enumerate(args[:-1]):
        if a in names:
            return args[i + 1]
    return None


def nnunet_hint(argv: Sequence[str]) -> str | None:
    """A message naming the autoseg call for an nnU-Net-style ``argv``, or None if it is not one."""
    if not argv:
        return None
    command, rest = argv[0], list(argv[1:])
    if command == "run_training":
        pos = _positionals(rest, ("-tr", "-p", "--trainer-path", "--epochs", "--iters-per-epoch", "-nw",
                                  "--num-workers", "--device", "--pretrained", "-pretrained_weights"))
        if len(pos) >= 2 and _ID.match(pos[0]) and (pos[1] in _CONFIGS or "-tr" in rest):
            trainer = _flag(rest, "-tr") or "Trainer"
            fold = pos[2] if len(pos) > 2 else "0"
            return ("autoseg run_training takes STAGE TRAINER ID FOLD, not nnU-Net's DATASET CONFIGURATION FOLD "
                    "-tr TRAINER; autoseg trains a cascade, one stage at a time:\n"
                    + "\n".join(f"  autoseg run_training {s} {trainer} {pos[0]} {fold}" for s in ("roi", "organ", "tumour")))
    if command in ("run_inference", "find_best_configuration", "plan_and_preprocess") and "-c" in rest:
        kept = [a for i, a in enumerate(rest) if a != "-c" and (i == 0 or rest[i - 1] != "-c")]
        return (f"autoseg {command} has no -c CONFIGURATION: the plans define the whole roi -> organ -> tumour "
                f"cascade. Try: autoseg {command} {' '.join(kept)}")
    if command == "find_best_configuration":
        pos = _positionals(rest, ("-tr", "-t", "-d", "--task", "--trainers", "--device", "--results", "-j"))
        if pos and _ID.match(pos[0]):
            return f"autoseg find_best_configuration names the dataset with -t (or -d): autoseg find_best_configuration -t {pos[0]}"
    if command == "evaluate":
        pos = _positionals(rest, ("-djfile", "-pfile", "-o", "-np"))
        if len(pos) == 2 and "-g" not in rest:
            dj = _flag(rest, "-djfile")
            return (f"autoseg evaluate takes -g GT -p PRED: autoseg evaluate -g {pos[0]} -p {pos[1]}"
                    + (f" --dataset-json {dj}" if dj else ""))
    return None
