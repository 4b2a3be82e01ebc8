"""nnUNetv2_plan_and_preprocess with a clock on each phase; run with the peer venv's python.

It calls the same three nnU-Net API functions, in the same order and with the same arguments (except that the fingerprint is always recomputed), as
nnU-Net's ``plan_and_preprocess_entry`` (fingerprint extraction with the integrity check, experiment
planning, preprocessing), and prints ``AUTOSEG_BENCH <phase>_s=<seconds>`` after each, because nnU-Net
itself logs no phase times. Usage: ``python timed_plan_and_preprocess.py -d 501 -c 3d_fullres -np 2``.
"""
import argparse
import time

from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprints, plan_experiments,
                                                                  preprocess)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-d", type=int, required=True)
    ap.add_argument("-c", nargs="+", default=["3d_fullres"])
    ap.add_argument("-np", type=int, default=2)
    ap.add_argument("--no_verify", action="store_true")
    args = ap.parse_args()
    t0 = time.perf_counter()
    extract_fingerprints([args.d], "DatasetFingerprintExtractor", args.np, not args.no_verify, True, False,
                         show_progress_bar=False)
    t1 = time.perf_counter()
    print(f"AUTOSEG_BENCH fingerprint_s={t1 - t0:.3f}", flush=True)
    plans_identifier = plan_experiments([args.d], "ExperimentPlanner")
    t2 = time.perf_counter()
    print(f"AUTOSEG_BENCH plan_s={t2 - t1:.3f}", flush=True)
    preprocess([args.d], plans_identifier, args.c, [args.np] * len(args.c), False, show_progress_bar=False)
    print(f"AUTOSEG_BENCH preprocess_s={time.perf_counter() - t2:.3f}", flush=True)


if __name__ == "__main__":
    main()
