"""``python -m pretrain --launcher slurm`` through submitit's local executor (the Slurm path
without a cluster): a preempted run's requeued job resumes from its checkpoint."""

from __future__ import annotations

import torch

from common.cli import EXIT_INTERRUPTED
from pretrain.__main__ import cli
from pretrain.launch import SlurmPretrainJob
from pretrain.recipes import recipe_config


def test_slurm_job_resumes_an_interrupted_run(tmp_path, shapes_root):
    args = [
        "--recipe",
        "test",
        "--method",
        "byol",
        "--data",
        str(shapes_root / "imagefolder"),
        "--output",
        str(tmp_path),
        "--epochs",
        "1",
        "--knn-every",
        "0",
    ]
    # the run is stopped after 3 steps (as a preemption's SIGTERM would), checkpoint kept
    assert cli([*args, "--stop-after-steps", "3"]) == EXIT_INTERRUPTED
    assert torch.load(tmp_path / "checkpoint.pth", weights_only=True)["state"]["global_step"] == 3
    # the job submitit runs (here through its local executor) resumes and finishes it
    assert cli([*args, "--launcher", "slurm", "--slurm-cluster", "local"]) == 0
    log = "".join(p.read_text() for p in (tmp_path / "slurm").glob("*_log.out"))
    assert f"resumed from {tmp_path / 'checkpoint.pth'}: epoch 0, step 3" in log
    final = torch.load(tmp_path / "byol_resnet18.pth", weights_only=True)
    assert final["meta"]["epochs"] == 1 and final["meta"]["hparams"]["recipe"] == "test"


def test_preemption_requeues_the_same_run():
    cfg = recipe_config("test", method="byol")
    again = SlurmPretrainJob().checkpoint(cfg)
    assert isinstance(again.function, SlurmPretrainJob) and again.args == (cfg,)
