"""DDP on two gloo processes (CPU): a rank whose whole batch is unreadable does not hang
the others; every rank skips that step together."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch

from pretrain.data import ResumableSampler, list_images


def _rank(rank: int, port: int, data: str, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE="2",
        LOCAL_RANK=str(rank),
    )
    from pretrain.recipes import recipe_config
    from pretrain.trainer import Trainer

    cfg = recipe_config(
        "test", method="byol", data=data, output=out, epochs=1, knn_every=0, max_bad_frac=0.5
    )
    t = Trainer(cfg)
    t.fit()
    Path(out, f"rank{rank}.json").write_text(
        json.dumps(
            {
                "global_step": t.global_step,
                "skipped_steps": t.skipped_steps,
                "bad_images": t.bad_images + 0,
            }
        )
    )
    torch.distributed.destroy_process_group()


def test_a_rank_with_an_all_corrupt_batch_does_not_hang_the_others(
    tmp_path, shapes_root, monkeypatch, free_port
):
    import torch.multiprocessing as mp

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # two CPU ranks, also on a GPU machine
    data = tmp_path / "data"
    shutil.copytree(shapes_root / "imagefolder", data)
    samples, _ = list_images(data / "train")
    # rank 1's first batch of 8 under the run's sampler (seed 0, epoch 0): all corrupt
    sampler = ResumableSampler(len(samples), seed=0, rank=1, world=2)
    for idx in list(sampler)[:8]:
        Path(samples[idx][0]).write_bytes(b"not an image")
    steps = len(samples) // 16
    ctx = mp.start_processes(
        _rank,
        args=(free_port, str(data), str(tmp_path / "run")),
        nprocs=2,
        join=False,
        start_method="spawn",
    )
    deadline = time.time() + 240
    while not ctx.join(timeout=5):
        if time.time() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the ranks hung: one skipped a step the other took")
    results = [json.loads((tmp_path / "run" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["skipped_steps"] for r in results] == [1, 1]
    assert [r["global_step"] for r in results] == [steps - 1, steps - 1]
    assert results[1]["bad_images"] == 8 and results[0]["bad_images"] == 0
