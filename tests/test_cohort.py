"""Cohort-scale inference: deterministic shards, --num-parts/--part-id, two gloo ranks under torchrun
with one rank killed and the run finished by a --continue rerun."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autoseg import AutosegError
from autoseg.utils import _host_tag, shard
from autoseg.inference.random_models import tiny_plans, write_random_checkpoints

from test_bundle import write_cases

# Rank 1 dies (SIGKILL, as an OOM killer or a lost node would) right after writing its first mask.
KILLER = """
import os, signal, sys
import autoseg.inference.io_threads as io_threads
real = io_threads.write_image
def write_then_die(*args, **kwargs):
    real(*args, **kwargs)
    if os.environ.get("RANK") == "1":
        os.kill(os.getpid(), signal.SIGKILL)
io_threads.write_image = write_then_die
from autoseg.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def test_shards_are_disjoint_complete_and_order_free():
    names = [f"case{i:02d}" for i in range(11)]
    parts = [shard(names[::-1], 3, k) for k in range(3)]
    assert sorted(sum(parts, [])) == names and parts[0] == ["case00", "case03", "case06", "case09"]
    assert parts == [shard(names, 3, k) for k in range(3)]
    with pytest.raises(AutosegError, match="--part-id"):
        shard(names, 2, 2)


@pytest.fixture
def cohort(tmp_path):
    write_random_checkpoints(tiny_plans(stages=("organ",)), tmp_path / "results")
    write_cases(tmp_path / "in", n=6, shape=(8, 16, 16))
    return tmp_path


def test_num_parts_write_each_case_once(cohort):
    from autoseg.inference.cli import run_inference

    for k in (0, 1):
        assert run_inference(str(cohort / "in"), str(cohort / "out"), 999, results=str(cohort / "results"),
                             device="cpu", num_threads=1, num_parts=2, part_id=k) == 0
    written = [json.loads((cohort / "out" / f"inference_summary_part{k}of2.json").read_text())["ranks"][0]["written"]
               for k in (0, 1)]
    assert written == [["case0", "case2", "case4"], ["case1", "case3", "case5"]]
    assert sorted(p.name for p in (cohort / "out").glob("*.nii.gz")) == [f"case{i}.nii.gz" for i in range(6)]


def _torchrun(cohort: Path, entry: list[str], *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTOSEG_", "nnUNet_"))}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parent))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *entry,
           "run_inference", "-i", "in", "-o", "out", "-t", "999", "--results", "results", "--device", "cpu",
           "--num-threads", "1", *extra]
    return subprocess.run(cmd, cwd=cohort, env=env, capture_output=True, text=True, timeout=300)


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_two_gloo_ranks_killed_rank_finished_by_continue(cohort):
    (cohort / "killer.py").write_text(KILLER)
    first = _torchrun(cohort, ["killer.py"])
    assert first.returncode != 0  # torchrun reports the dead rank (and stops the other)
    out = cohort / "out"
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.nii.gz")}
    assert "case1.nii.gz" in before and "case3.nii.gz" not in before  # rank 1 wrote one case, then died
    dead = _dead_pid()
    (out / f".case3.nii.gz.autoseg-tmp.{_host_tag()}.{dead}.x1y2z3.nii.gz").write_bytes(b"half-written, writer gone")
    second = _torchrun(cohort, ["-m", "autoseg"], "--continue")
    assert second.returncode == 0, second.stderr[-2000:]
    summary = json.loads((out / "inference_summary.json").read_text())
    assert summary["world_size"] == 2 and not summary["failed"]
    by_rank = [r["written"] for r in sorted(summary["ranks"], key=lambda r: r["rank"])]
    assert set(by_rank[1]) == {"case3", "case5"} and not set(by_rank[0]) & set(by_rank[1])
    rerun = sorted(by_rank[0] + by_rank[1])
    assert rerun == sorted(f"case{i}" for i in range(6) if f"case{i}.nii.gz" not in before)  # none twice
    assert sorted(p.name for p in out.glob("*.nii.gz")) == [f"case{i}.nii.gz" for i in range(6)]
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.nii.gz") if p.name in before} == before
    assert not list(out.glob(".case3*"))  # the killed writer's temp file was cleared
    assert "written by 2 ranks" in second.stdout


def test_preprocessing_in_parts(tmp_path):
    """Each part preprocesses its own cases, leaves the others' in-flight temp files alone, and the parts
    together equal the whole dataset."""
    from autoseg.planners import plan_and_preprocess
    from test_preprocessing_pipeline import make_tiny_dataset

    make_tiny_dataset(tmp_path / "raw", n=3, tumour=False, shape=(12, 24, 24))
    kw = dict(raw=tmp_path / "raw", preprocessed=tmp_path / "pre", num_workers=1, progress=False, stages=["organ"])
    out = tmp_path / "pre" / "Dataset990_Tiny"
    (out / "organ").mkdir(parents=True)
    (out / "organ" / ".case_001.npz.tmp123.npz").write_bytes(b"part 1 is writing this")
    plan_and_preprocess(990, num_parts=2, part_id=0, **kw)
    assert sorted(p.name for p in (out / "organ").glob("case*.npz")) == ["case_000.npz", "case_002.npz"]
    assert (out / "organ" / ".case_001.npz.tmp123.npz").exists()
    plan_and_preprocess(990, num_parts=2, part_id=1, **kw)
    assert sorted(p.name for p in (out / "organ").glob("case*.npz")) == [f"case_00{i}.npz" for i in range(3)]


def test_a_scheduler_part_holds_the_same_cases_whatever_the_number_of_ranks(monkeypatch):
    from autoseg.inference.cohort import cohort_part

    monkeypatch.setattr("torch.distributed.init_process_group", lambda **kw: None)
    monkeypatch.setattr("torch.distributed.destroy_process_group", lambda: None)
    names = [f"c{i:02d}" for i in range(20)]
    for world in (2, 3):
        got = []
        for rank in range(world):
            monkeypatch.setenv("WORLD_SIZE", str(world))
            monkeypatch.setenv("RANK", str(rank))
            with cohort_part(4, 1) as part:
                got += shard(names, part.num_parts, part.part_id)
        assert sorted(got) == shard(names, 4, 1)
