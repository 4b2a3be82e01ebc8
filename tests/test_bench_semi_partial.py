"""The imperfect-data benchmark's scheduler: seed-major order, filtered arms after their scorer, resume,
and the stop time (the training itself is exercised by the CLI tests; here run_one is replaced)."""
from __future__ import annotations

import json
import time

import benchmarks.bench_semi_partial as bench


def fake_runs(monkeypatch, calls: list, fail: set = frozenset()):
    def run_one(work, arm, task, name, trainer, seed, epochs, iters, keep):
        calls.append((arm, seed))
        time.sleep(0.02)
        if (arm, seed) in fail:
            raise SystemExit("failed")
        return {"arm": arm, "seed": seed, "mean_organ_dsc": 0.5, "train_seconds": 0.0, "trainer": trainer,
                "task": task, "per_class_dsc": {str(o): 0.5 for o in bench.ORGANS}}
    monkeypatch.setattr(bench, "run_one", run_one)


def test_order_dependencies_and_resume(tmp_path, monkeypatch):
    calls: list = []
    fake_runs(monkeypatch, calls, fail={("cps_all", 1)})
    arms = bench.PARTIAL_ARMS + bench.SSL_ARMS
    bench.run_arms(tmp_path, arms, [0, 1], 1, 1, 0.25, jobs=1)
    assert [s for _, s in calls] == sorted(s for _, s in calls)  # every arm of seed 0 before seed 1
    assert calls.index(("cps_all", 0)) < calls.index(("cps_filtered", 0))
    assert ("cps_filtered", 1) not in calls  # its scorer failed: never started
    done = {(r["arm"], r["seed"]) for r in json.loads((tmp_path / "results.json").read_text())}
    assert len(done) == 10 and ("cps_all", 1) not in done
    calls.clear()
    fake_runs(monkeypatch, calls)
    bench.run_arms(tmp_path, arms, [0, 1], 1, 1, 0.25, jobs=2)  # resumes: only the two missing runs
    assert calls == [("cps_all", 1), ("cps_filtered", 1)]
    assert "| cps_filtered | TrainerFastCPS | 781 | 2 | 0.5000 ± 0.0000" in bench.report(tmp_path)


def test_stop_after_starts_nothing(tmp_path, monkeypatch):
    calls: list = []
    fake_runs(monkeypatch, calls)
    bench.run_arms(tmp_path, bench.TUNED_ARMS, [0], 1, 1, 0.25, jobs=1, stop_after=-1.0)
    assert calls == []
