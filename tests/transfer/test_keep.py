"""What a finished seed keeps of its checkpoints (transfer.keep, --keep-checkpoints)."""

from __future__ import annotations

import pytest
import torch

from transfer.keep import prune_seed_checkpoints


def _d2_seed(folder):
    """A finished detectron2 seed's files: two periodic checkpoints and the final one, each
    with the optimiser's state (the bulk), and detectron2's pointer to the newest."""
    model = {"w": torch.arange(6.0)}
    for it in (9, 19):
        torch.save({"model": model, "optimizer": {"m": torch.zeros(1000)}, "iteration": it},
                   folder / f"model_{it:07d}.pth")  # fmt: skip
    torch.save({"model": model, "optimizer": {"m": torch.zeros(1000)}, "scheduler": {},
                "iteration": 29}, folder / "model_final.pth")  # fmt: skip
    (folder / "last_checkpoint").write_text("model_final.pth")
    (folder / "metrics.json").write_text("{}")
    return model


def test_final_keeps_the_final_weights_without_the_optimiser(tmp_path):
    model = _d2_seed(tmp_path)
    freed = prune_seed_checkpoints(tmp_path, "final")
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == ["model_final.pth"]
    final = torch.load(tmp_path / "model_final.pth", weights_only=True)
    assert final.keys() == {"model", "iteration"} and final["iteration"] == 29
    assert torch.equal(final["model"]["w"], model["w"])
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    assert freed > 3 * 4000  # three optimiser states of 1000 floats and two model copies


def test_final_weights_load_into_a_detectron2_model(tmp_path):
    from detectron2.checkpoint import DetectionCheckpointer

    net = torch.nn.Linear(2, 3)
    torch.save({"model": net.state_dict(), "optimizer": {}, "iteration": 5},
               tmp_path / "model_final.pth")  # fmt: skip
    prune_seed_checkpoints(tmp_path, "final")
    other = torch.nn.Linear(2, 3)
    DetectionCheckpointer(other, str(tmp_path)).resume_or_load("", resume=True)
    assert torch.equal(other.weight, net.weight)


def test_none_keeps_no_checkpoint_and_all_keeps_every_one(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _d2_seed(tmp_path / "a")
    _d2_seed(tmp_path / "b")
    prune_seed_checkpoints(tmp_path / "a", "none")
    assert not list((tmp_path / "a").glob("*.pth"))
    assert not (tmp_path / "a" / "last_checkpoint").exists()
    assert (tmp_path / "a" / "metrics.json").exists()
    assert prune_seed_checkpoints(tmp_path / "b", "all") == 0
    assert len(list((tmp_path / "b").glob("*.pth"))) == 3
    with pytest.raises(ValueError, match="one of all, final, none"):
        prune_seed_checkpoints(tmp_path / "b", "some")


def test_a_classification_checkpoint_keeps_its_trained_weights(tmp_path):
    head = {"weight": torch.ones(3, 4)}
    state = {"epoch": 2, "head": head, "history": [{"epoch": 1}], "protocol": {},
             "optimizer": {"state": {0: torch.zeros(100)}}}  # fmt: skip
    torch.save(state, tmp_path / "checkpoint.pth")
    prune_seed_checkpoints(tmp_path, "final")
    kept = torch.load(tmp_path / "checkpoint.pth", weights_only=False)
    assert kept.keys() == {"epoch", "head", "history", "protocol"}
    assert torch.equal(kept["head"]["weight"], head["weight"])
