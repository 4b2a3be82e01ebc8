"""Trainer end to end on a tiny synthetic cache: user trainer lookup, outputs, exact resume, workers, DDP."""
from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from autoseg import AutosegError
from autoseg.plans import load_plans
from autoseg.trainers import Trainer, find_trainer, run_training
from autoseg.trainers.synthetic_cache import synthetic_plans, write_synthetic_cache

REPO = Path(__file__).resolve().parents[1]
NAME = "Dataset900_Tiny"

# Exactly the trainer the README shows (also kept in the lead's notes for pasting).
README_TRAINER = '''\
# my_trainers/my_trainer.py  --  run with: AUTOSEG_TRAINER_PATH=my_trainers autoseg run_training organ MyTrainer 501 0
from autoseg.trainers import Trainer


class MyTrainer(Trainer):
    """300 epochs, a higher learning rate, more foreground patches, elastic deformation on."""

    num_epochs = 300
    initial_lr = 2e-2
    oversample_foreground = 0.5

    def augmentation_config(self):
        return super().augmentation_config().with_changes(elastic=True)
'''


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pre")
    write_synthetic_cache(root / NAME, synthetic_plans(NAME), num_cases=6, shape=(20, 36, 36))
    return root


def make(cls: type, cache: Path, out: Path, **kw) -> Trainer:
    plans = load_plans(cache / NAME / "plans.json")
    kw = {"num_epochs": 2, "iters_per_epoch": 2, "num_workers": 0, **kw}
    return cls(plans, "organ", 0, cache / NAME, "cpu", out, **kw)


def test_readme_user_trainer_found_and_trained(cache, tmp_path, monkeypatch):
    folder = tmp_path / "my_trainers"
    folder.mkdir()
    (folder / "my_trainer.py").write_text(README_TRAINER)
    monkeypatch.setenv("AUTOSEG_TRAINER_PATH", str(folder))
    cls = find_trainer("MyTrainer")
    assert issubclass(cls, Trainer) and cls.num_epochs == 300
    out = run_training("organ", "MyTrainer", 900, 0, epochs=1, iters_per_epoch=2, device="cpu", num_workers=0,
                       preprocessed=cache, results=tmp_path / "results")
    assert out == tmp_path / "results" / NAME / "organ" / "MyTrainer" / "fold_0"
    for name in ("checkpoint_latest.pt", "checkpoint_best.pt", "checkpoint_final.pt", "training_log.txt",
                 "progress.png", "postprocessing.json", "validation/metrics.csv", "validation/summary.json"):
        assert (out / name).is_file(), name
    ckpt = torch.load(out / "checkpoint_final.pt", weights_only=True)
    assert {"network_weights", "plans", "stage", "trainer_name", "epoch", "optimizer_state",
            "grad_scaler_state", "rng_state", "logs", "provenance"} <= set(ckpt)
    assert ckpt["provenance"]["dataset_name"] == NAME and ckpt["provenance"]["classes"] == [1, 2]
    assert ckpt["trainer_name"] == "MyTrainer" and ckpt["stage"] == "organ" and ckpt["epoch"] == 1
    log = (out / "training_log.txt").read_text()
    assert "epoch 1/1: train loss" in log and "pseudo dice [liver" in log and "lr 2.00e-02" in log
    splits = (cache / NAME / "splits.json")
    assert splits.is_file()
    val_cases = sorted(p.name[: -len(".nii.gz")] for p in (out / "validation").glob("*.nii.gz"))
    import json
    assert val_cases == sorted(json.loads(splits.read_text())[0]["val"])


def test_registry_errors_name_places(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "dup.py").write_text("from autoseg.trainers import Trainer\n\nclass TrainerDup(Trainer):\n    pass\n")
    with pytest.raises(AutosegError, match=r"defined twice.*a[/\\]dup\.py.*b[/\\]dup\.py"):
        find_trainer("TrainerDup", [a, b])
    with pytest.raises(AutosegError, match=r"not found; known trainers: .*TrainerShort"):
        find_trainer("NoSuchTrainer")
    (a / "broken.py").write_text("import does_not_exist\nfrom autoseg.trainers import Trainer\n\n"
                                 "class TrainerBroken(Trainer):\n    pass\n")
    with pytest.raises(AutosegError, match="broken.py: cannot import"):
        find_trainer("TrainerBroken", [a])
    assert find_trainer("TrainerTumourDynamicWeights").__name__ == "TrainerTumourDynamicWeights"


class _Killed(Exception):
    pass


def test_killed_mid_epoch_resumes_to_the_same_curve(cache, tmp_path):
    class Dies(Trainer):
        def train_step(self, batch):
            self.steps = getattr(self, "steps", 0) + 1
            if self.steps == 4:  # second iteration of the second epoch
                raise _Killed()
            return super().train_step(batch)

    kw = {"num_epochs": 3}
    ref = make(Trainer, cache, tmp_path / "ref", **kw)
    ref.final_validation = lambda: None
    ref.fit()
    dying = make(Dies, cache, tmp_path / "run", **kw)
    with pytest.raises(_Killed):
        dying.fit()
    assert dying.current_epoch == 1
    resumed = make(Trainer, cache, tmp_path / "run", **kw)
    resumed.final_validation = lambda: None
    resumed.fit(continue_training=True)
    for key in ("train_loss", "val_loss", "lr"):
        assert resumed.progress.curves[key] == ref.progress.curves[key], key
    for (k, x), y in zip(ref.network.state_dict().items(), resumed.network.state_dict().values()):
        assert torch.equal(x, y), k


def test_workers_gone_after_exception(cache, tmp_path):
    class Fails(Trainer):
        def train_step(self, batch):
            self.pids = self.loader_pids()
            raise RuntimeError("boom in step")

        def get_dataloaders(self):
            loaders = super().get_dataloaders()
            self.loader_pids = lambda: loaders[0].worker_pids() + loaders[1].worker_pids()
            return loaders

    t = make(Fails, cache, tmp_path / "w", num_workers=2)
    with pytest.raises(RuntimeError, match="boom"):
        t.fit()
    assert len(t.pids) >= 2
    assert multiprocessing.active_children() == []
    assert not [p for p in t.pids if Path(f"/proc/{p}").exists()]


def test_pretrained_and_variants(cache, tmp_path):
    base = make(Trainer, cache, tmp_path / "base", num_epochs=1)
    base.final_validation = lambda: None
    base.fit()
    plans = load_plans(cache / NAME / "plans.json")
    plans["stages"]["organ"]["classes"] = [1]  # a different head: must be skipped, the rest loaded
    ft_cache = tmp_path / "ft_cache" / NAME  # caches are made per plans: the trainer refuses stale ones
    write_synthetic_cache(ft_cache, plans, num_cases=6, shape=(20, 36, 36))
    from autoseg.trainers import TrainerFinetune, TrainerTumourDynamicWeights
    with pytest.raises(AutosegError, match="--pretrained"):
        TrainerFinetune(plans, "organ", 0, ft_cache, "cpu", tmp_path / "ft", num_epochs=1,
                        iters_per_epoch=1, num_workers=0).fit()
    ft = TrainerFinetune(plans, "organ", 0, ft_cache, "cpu", tmp_path / "ft", num_epochs=1,
                         iters_per_epoch=1, num_workers=0, pretrained=tmp_path / "base" / "checkpoint_final.pt")
    ft.initialize()
    # what --pretrained put into ft's network, tensor by tensor, against base's trained weights
    trained, fresh = base.network.state_dict(), make(Trainer, cache, tmp_path / "fresh", num_epochs=1)
    fresh.initialize()
    init = fresh.network.state_dict()
    same_shape = [k for k, v in ft.network.state_dict().items() if k in trained and trained[k].shape == v.shape]
    other = [k for k in ft.network.state_dict() if k not in same_shape]
    assert other and all("seg" in s or "head" in s or "out" in s for s in other), other
    assert len(same_shape) > len(other)
    for k in same_shape:
        assert torch.equal(ft.network.state_dict()[k], trained[k]), k
    moved = [k for k in same_shape if not torch.equal(trained[k], init[k])]
    assert moved, "base training changed no tensor: the check above could not tell pretrained from fresh"
    assert ft.initial_lr == 1e-3
    dyn = make(TrainerTumourDynamicWeights, cache, tmp_path / "dyn", num_epochs=1)
    dyn.final_validation = lambda: None
    dyn.fit()
    w = dyn.class_weights.cpu()
    assert w[0] == 1 and w[2] > w[1] >= 1  # the tumour is the rarest class
    ckpt = torch.load(tmp_path / "dyn" / "checkpoint_final.pt", weights_only=True)
    assert torch.equal(ckpt["extra_state"]["class_weights"], w)


def test_bad_fold_and_stage(cache, tmp_path):
    with pytest.raises(AutosegError, match="FOLD must be"):
        run_training("organ", "Trainer", 900, "x", preprocessed=cache, results=tmp_path)
    with pytest.raises(AutosegError, match="no stage 'tumour'"):
        run_training("tumour", "Trainer", 900, 0, preprocessed=cache, results=tmp_path)


DDP_PROBE = textwrap.dedent('''
    import torch
    from autoseg.trainers import Trainer


    class TrainerDDPProbe(Trainer):
        def train_step(self, batch):
            out = super().train_step(batch)
            self.steps = getattr(self, "steps", 0) + 1
            folder = self.output_folder.parent / "probe"
            folder.mkdir(parents=True, exist_ok=True)
            torch.save(dict(self.network.state_dict()), folder / f"rank{self.rank}_step{self.steps}.pt")
            return out
''')

DDP_DRIVER = textwrap.dedent('''
    import sys
    from autoseg.trainers import run_training
    run_training("organ", "TrainerDDPProbe", 900, 0, epochs=1, iters_per_epoch=2, device="cpu",
                 num_workers=0, trainer_path=sys.argv[1], preprocessed=sys.argv[2], results=sys.argv[3])
''')


def test_ddp_two_gloo_processes(cache, tmp_path):
    (tmp_path / "tp").mkdir()
    (tmp_path / "tp" / "probe.py").write_text(DDP_PROBE)
    (tmp_path / "drive.py").write_text(DDP_DRIVER)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    res = tmp_path / "res"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(tmp_path / "drive.py"), str(tmp_path / "tp"), str(cache), str(res)],
                          env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    fold = res / NAME / "organ" / "TrainerDDPProbe" / "fold_0"
    assert (fold / "checkpoint_final.pt").is_file() and (fold / "validation" / "summary.json").is_file()
    log = (fold / "training_log.txt").read_text()
    assert log.count("epoch 1/1") == 1 and "ranks=2" in log and "batch=1/rank" in log
    import json
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert summary["num_cases"] == 2  # one case from each rank, merged
    for step in (1, 2):
        w0 = torch.load(fold.parent / "probe" / f"rank0_step{step}.pt", weights_only=True)
        w1 = torch.load(fold.parent / "probe" / f"rank1_step{step}.pt", weights_only=True)
        assert all(torch.equal(w0[k], w1[k]) for k in w0)


HANG_PROBE = textwrap.dedent('''
    import os, sys, time
    from autoseg.trainers import Trainer


    class TrainerHangs(Trainer):
        def get_dataloaders(self):
            self.loaders = super().get_dataloaders()
            return self.loaders

        def train_step(self, batch):
            pids = self.loaders[0].worker_pids() + self.loaders[1].worker_pids()
            with open(os.environ["PIDS_FILE"] + ".tmp", "w") as f:
                f.write(" ".join(map(str, pids)))
            os.replace(os.environ["PIDS_FILE"] + ".tmp", os.environ["PIDS_FILE"])
            time.sleep(600)
''')


def test_sigkilled_trainer_leaves_no_orphan_workers(cache, tmp_path):
    import signal
    import time

    (tmp_path / "tp").mkdir()
    (tmp_path / "tp" / "hang.py").write_text(HANG_PROBE)
    pids_file = tmp_path / "pids.txt"
    code = ("import sys; from autoseg.trainers import run_training; run_training('organ', 'TrainerHangs', 900, 0, "
            "device='cpu', num_workers=2, trainer_path=sys.argv[1], preprocessed=sys.argv[2], results=sys.argv[3])")
    env = {**os.environ, "PYTHONPATH": str(REPO), "PIDS_FILE": str(pids_file)}
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "tp"), str(cache), str(tmp_path / "r")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not pids_file.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert pids_file.exists(), "trainer never started its workers"
        workers = [int(p) for p in pids_file.read_text().split()]
        assert len(workers) >= 2 and all(Path(f"/proc/{p}").exists() for p in workers)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.time() + 30  # workers notice their parent is gone within torch's 5 s status interval
    while time.time() < deadline and any(Path(f"/proc/{p}").exists() for p in workers):
        time.sleep(0.2)
    alive = [p for p in workers if Path(f"/proc/{p}").exists()
             and Path(f"/proc/{p}/stat").read_text().split()[2] != "Z"]
    assert not alive, f"orphaned workers still running: {alive}"


def test_splits_are_deterministic_and_cover_small_datasets(tmp_path):
    from autoseg.trainers.splits import fold_cases, load_or_create_splits, make_splits

    ids = [f"c{i}" for i in range(12)]
    a, b = make_splits(ids), make_splits(list(reversed(ids)))
    assert a == b and len(a) == 5
    assert sorted(c for s in a for c in s["val"]) == sorted(ids)  # every case validated exactly once
    assert all(not set(s["train"]) & set(s["val"]) for s in a)
    few = make_splits(["x", "y"])
    assert all(len(s["val"]) == 1 and s["train"] for s in few)
    splits = load_or_create_splits(tmp_path, ids)
    (tmp_path / "splits.json").write_text('[{"train": ["c0", "c1"], "val": ["c2", "gone"]}]')  # user-edited
    assert load_or_create_splits(tmp_path, ids) != splits
    train, val = fold_cases(load_or_create_splits(tmp_path, ids), 0, ["c0", "c1", "c2", "c3"])
    assert train == ["c0", "c1", "c3"] and val == ["c2"]  # unknown ids skipped, unassigned cases trained on
    with pytest.raises(AutosegError, match="fold 3 does not exist"):
        fold_cases(load_or_create_splits(tmp_path, ids), 3, ids)


def test_stage_grid_geometry_places_the_crop():
    from autoseg.io import Geometry
    from autoseg.trainers.validation import stage_grid_geometry

    orig = Geometry((3.0, 0.5, 0.5), (10.0, 20.0, 30.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), (50, 100, 100))
    props = {"original_geometry": orig.to_dict(), "crop_bbox": [[5, 45], [10, 90], [20, 80]]}
    g = stage_grid_geometry(props, (40, 40, 30), [3.0, 1.0, 1.0])
    # origin is ITK (x, y, z): x 10 + 20 * 0.5 + (1.0 - 0.5) / 2, y 20 + 10 * 0.5 + 0.25, z 30 + 5 * 3 + 0
    assert g.origin == pytest.approx((20.25, 25.25, 45.0)) and g.spacing == (3.0, 1.0, 1.0)


def test_build_network_outside_the_registry_is_refused(cache, tmp_path):
    """One construction path: a network the plans do not name would train, then fail at inference."""
    from torch import nn

    from autoseg.networks import UNet

    class Sneaky(UNet):
        def decoder_stage(self, level: int) -> nn.Module:
            f = self.cfg.features[level]
            return nn.Sequential(nn.Conv3d(2 * f, f, 1))

    class TrainerSneaky(Trainer):
        def build_network(self) -> nn.Module:
            return Sneaky.from_config(self.stage_plans["network"], 1, self.num_classes, True)

    with pytest.raises(AutosegError, match="network_config"):
        make(TrainerSneaky, cache, tmp_path / "out").initialize()


KILL_PROBE = textwrap.dedent('''
    import os
    import signal

    from autoseg.trainers import Trainer


    class TrainerKilled(Trainer):
        def train_step(self, batch):
            self.steps = getattr(self, "steps", 0) + 1
            if self.steps == int(os.environ.get("KILL_AT_STEP", "0")):
                with open(os.environ["KILL_MARK"], "w") as f:
                    f.write(str(self.current_epoch))
                os.kill(os.getpid(), signal.SIGKILL)  # no clean-up, no exception handler: a real kill
            return super().train_step(batch)
''')


def _train_in_subprocess(tmp_path, cache, results, kill_at_step=0, resume=False):
    """One `run_training` in a fresh process: the killed, the resumed and the reference run then share
    thread settings and start-up state, as CLI runs do (an in-process reference inherited whatever earlier
    tests had set and differed in the 7th digit of a float32 reduction)."""
    code = ("import sys; from autoseg.trainers import run_training; run_training('organ', 'TrainerKilled', 900, 0, "
            "epochs=2, iters_per_epoch=2, device='cpu', num_workers=2, trainer_path=sys.argv[1], "
            "preprocessed=sys.argv[2], results=sys.argv[3], continue_training=sys.argv[4] == '1')")
    env = {**os.environ, "PYTHONPATH": str(REPO), "KILL_AT_STEP": str(kill_at_step),
           "KILL_MARK": str(tmp_path / "killed_in_epoch.txt")}
    return subprocess.run([sys.executable, "-c", code, str(tmp_path / "tp"), str(cache), str(results),
                           "1" if resume else "0"], env=env, capture_output=True, text=True, timeout=300)


def test_sigkill_with_loader_workers_resumes_exactly(cache, tmp_path):
    """The CLI promises an exact resume: SIGKILL mid-epoch with 2 loader workers, then --continue, must
    give the same curves and final weights as an uninterrupted run."""
    (tmp_path / "tp").mkdir()
    (tmp_path / "tp" / "killed.py").write_text(KILL_PROBE)
    proc = _train_in_subprocess(tmp_path, cache, tmp_path / "run", kill_at_step=3)
    assert proc.returncode == -9, proc.stderr[-2000:]  # it was killed, not finished or crashed
    assert (tmp_path / "killed_in_epoch.txt").read_text() == "1"  # epoch 2's first step, after epoch 1's checkpoint
    folder = tmp_path / "run" / NAME / "organ" / "TrainerKilled" / "fold_0"
    assert not (folder / "checkpoint_final.pt").exists()
    for results, resume in ((tmp_path / "run", True), (tmp_path / "ref", False)):
        proc = _train_in_subprocess(tmp_path, cache, results, resume=resume)
        assert proc.returncode == 0, proc.stderr[-2000:]
    final = [r / NAME / "organ" / "TrainerKilled" / "fold_0" / "checkpoint_final.pt"
             for r in (tmp_path / "run", tmp_path / "ref")]
    resumed, ref = (torch.load(f, weights_only=True) for f in final)
    assert "resumed from" in (folder / "training_log.txt").read_text()
    for key in ("train_loss", "val_loss", "lr"):
        assert resumed["logs"][key] == ref["logs"][key], key
    for k, v in ref["network_weights"].items():
        assert torch.equal(v, resumed["network_weights"][k]), k


def test_progress_inside_an_epoch(cache, tmp_path, capsys, monkeypatch):
    """Long CPU epochs show a bar with the iteration count and rate (tqdm on stderr); AUTOSEG_PROGRESS=0 hides it."""
    t = make(Trainer, cache, tmp_path / "bar", num_epochs=1)
    t.final_validation = lambda: None
    t.fit()
    err = capsys.readouterr().err
    assert "epoch 1/1" in err and "0/2 [" in err and "it/s" in err
    monkeypatch.setenv("AUTOSEG_PROGRESS", "0")
    t = make(Trainer, cache, tmp_path / "quiet", num_epochs=1)
    t.final_validation = lambda: None
    t.fit()
    assert "epoch 1/1" not in capsys.readouterr().err
