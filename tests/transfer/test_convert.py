"""transfer.convert: every accepted format converts and reproduces torchvision's features."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from common import checkpoints as ck
from transfer import convert as cv

REPO = Path(__file__).resolve().parents[2]


def _randomised_resnet50(seed: int = 0) -> torch.nn.Module:
    """A torchvision ResNet-50 with non-trivial BN statistics (so a BN mix-up shows)."""
    torch.manual_seed(seed)
    m = torchvision.models.resnet50(weights=None)
    g = torch.Generator().manual_seed(seed)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.normal_(0, 0.2, generator=g)
            mod.running_var.uniform_(0.5, 2.0, generator=g)
            mod.weight.data.uniform_(0.5, 1.5, generator=g)
            mod.bias.data.normal_(0, 0.2, generator=g)
    return m


@pytest.fixture(scope="module")
def r50_state():
    return _randomised_resnet50().state_dict()


def _formats(sd: dict) -> dict[str, tuple[dict, set[str]]]:
    """name -> (checkpoint, keys that must be reported as dropped)."""
    body = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    proj = {"0.weight": torch.randn(8, 2048), "0.bias": torch.zeros(8)}
    moco = {"module.encoder_q." + k: v for k, v in body.items()}
    moco.update({"module.encoder_q.fc." + k: v for k, v in proj.items()})
    moco.update({"module.encoder_k." + k: v.clone() for k, v in body.items()})
    moco["module.queue"] = torch.randn(8, 16)
    care = {"module.student_encoder." + k: v for k, v in body.items()}
    care.update(
        {
            "module.student_encoder.trans.0.conv.weight": torch.randn(4, 4, 1, 1),
            "module.student_encoder.fc1.0.weight": torch.randn(8, 2048),
            "module.student_encoder.fc2.0.weight": torch.randn(8, 8),
        }
    )
    care.update({"module.teacher_encoder." + k: v.clone() for k, v in body.items()})
    vissl_trunk = {"_feature_blocks." + k: v for k, v in body.items()}
    vissl = {
        "classy_state_dict": {
            "base_model": {
                "model": {"trunk": vissl_trunk, "heads": {"0.clf.0.weight": torch.randn(8, 2048)}}
            }
        },
        "phase_idx": 199,
        "type": "checkpoint",
    }
    dino = {
        "student": {"module.backbone." + k: v.clone() for k, v in body.items()},
        "teacher": {"backbone." + k: v for k, v in body.items()},
        "epoch": 100,
    }
    dino["teacher"]["head.mlp.0.weight"] = torch.randn(8, 2048)
    suite = {
        "format": cv.SUITE_FORMAT,
        "backbone": dict(body),
        "meta": {"method": "care", "epochs": 3, "arch": "resnet50"},
    }
    return {
        "torchvision": (dict(sd), {"fc.weight", "fc.bias"}),
        "moco": (
            {"epoch": 200, "arch": "resnet50", "state_dict": moco},
            {"module.queue", "module.encoder_q.fc.0.weight", "module.encoder_k.conv1.weight"},
        ),
        "care_official": (
            {"model": care, "epoch": 200},
            {
                "module.student_encoder.trans.0.conv.weight",
                "module.student_encoder.fc1.0.weight",
                "module.teacher_encoder.layer4.2.bn3.weight",
            },
        ),
        "suite": (suite, set()),
        "vissl": (vissl, {"classy_state_dict.base_model.model.heads.0.clf.0.weight"}),
        "dino": (dino, {"head.mlp.0.weight"}),
    }


@pytest.mark.parametrize("fmt", ["torchvision", "moco", "care_official", "suite", "vissl", "dino"])
def test_each_format_converts_equivalently(fmt, r50_state, tmp_path):
    ckpt, must_drop = _formats(r50_state)[fmt]
    src, dst = tmp_path / f"{fmt}.pth", tmp_path / f"{fmt}.pkl"
    torch.save(ckpt, src)
    report = cv.convert_file(src, dst)
    assert report["arch"] == "ResNet-50"
    assert report["max_rel_diff"] is not None and report["max_rel_diff"] <= cv.TOLERANCE
    assert must_drop <= set(report["dropped"])
    with open(dst, "rb") as f:
        out = pickle.load(f)
    assert out["__author__"] and out["matching_heuristics"] is True
    model = out["model"]
    # hand-checked names of the mapping (docs/protocols.md)
    np.testing.assert_array_equal(model["stem.conv1.weight"], r50_state["conv1.weight"].numpy())
    np.testing.assert_array_equal(
        model["stem.conv1.norm.running_var"], r50_state["bn1.running_var"].numpy()
    )
    np.testing.assert_array_equal(
        model["res3.0.conv2.norm.bias"], r50_state["layer2.0.bn2.bias"].numpy()
    )
    np.testing.assert_array_equal(
        model["res5.0.shortcut.weight"], r50_state["layer4.0.downsample.0.weight"].numpy()
    )
    np.testing.assert_array_equal(
        model["res5.0.shortcut.norm.running_mean"],
        r50_state["layer4.0.downsample.1.running_mean"].numpy(),
    )
    assert not any(k.startswith(("fc", "trans")) for k in model)
    if fmt == "suite":
        assert out["suite_meta"]["method"] == "care" and out["suite_meta"]["epochs"] == 3
    source = {"vissl": "VISSL trunk (nested dicts", "dino": "backbone ('teacher'"}
    assert report["source_format"].startswith(source.get(fmt, "")), report["source_format"]


def test_detectron2_pickle_passes_through(r50_state, tmp_path):
    src = tmp_path / "a.pth"
    torch.save(r50_state, src)
    cv.convert_file(src, tmp_path / "a.pkl")
    report = cv.convert_file(tmp_path / "a.pkl", tmp_path / "b.pkl")
    assert report["source_format"].startswith("Detectron2 pickle")
    a = pickle.load(open(tmp_path / "a.pkl", "rb"))["model"]
    b = pickle.load(open(tmp_path / "b.pkl", "rb"))["model"]
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_truncated_checkpoint_is_refused_naming_keys(r50_state, tmp_path):
    sd = {k: v for k, v in r50_state.items() if not k.startswith("layer4.2.")}
    src, dst = tmp_path / "trunc.pth", tmp_path / "trunc.pkl"
    torch.save(sd, src)
    with pytest.raises(cv.ConversionError, match=r"res5\.2\.conv1"):
        cv.convert_file(src, dst)
    assert not dst.exists()


def test_non_resnet_checkpoint_is_refused(tmp_path):
    vit = {
        "cls_token": torch.zeros(1, 1, 8),
        "blocks.0.attn.qkv.weight": torch.randn(24, 8),
        "patch_embed.proj.weight": torch.randn(8, 3, 16, 16),
    }
    src, dst = tmp_path / "vit.pth", tmp_path / "vit.pkl"
    torch.save({"model": vit}, src)
    with pytest.raises(cv.ConversionError, match=r"layer1\.0\.conv1\.weight.*blocks\.0\.attn"):
        cv.convert_file(src, dst)
    assert not dst.exists()


def test_numerical_check_catches_a_wrong_mapping(r50_state, monkeypatch):
    right = cv.torchvision_to_d2_name

    def swapped(key: str) -> str:  # bn1 <-> bn2 in one block: same shapes, wrong network
        if key.startswith("layer1.0.bn1."):
            key = key.replace("bn1.", "bn2.")
        elif key.startswith("layer1.0.bn2."):
            key = key.replace("bn2.", "bn1.")
        return right(key)

    monkeypatch.setattr(cv, "torchvision_to_d2_name", swapped)
    with pytest.raises(cv.ConversionError, match="numerical check failed"):
        cv.convert_state(r50_state)


def test_ambiguous_prefixes_need_a_choice():
    body = {"conv1.weight": torch.zeros(1), "layer1.0.conv1.weight": torch.zeros(1)}
    keys = [p + k for p in ("net_a.", "net_b.") for k in body]
    with pytest.raises(cv.ConversionError, match="--prefix"):
        ck.find_prefix(keys)
    assert ck.find_prefix(keys, "net_b.")[0] == "net_b."


def test_torch_file_with_python_objects_needs_allow_pickle(r50_state, tmp_path):
    import argparse

    src = tmp_path / "obj.pth"
    torch.save({"state_dict": r50_state, "args": argparse.Namespace(lr=0.1)}, src)
    with pytest.raises(cv.ConversionError, match="--allow-pickle"):
        cv.load_any(src)
    assert "state_dict" in cv.load_any(src, allow_pickle=True)


def test_cli_prints_report(r50_state, tmp_path, capsys):
    src = tmp_path / "r50.pth"
    torch.save(r50_state, src)
    cv.main(cv.get_args_parser().parse_args([str(src), str(tmp_path / "r50.pkl")]))
    out = capsys.readouterr().out
    assert "ResNet-50" in out and "max relative diff" in out and "fc" in out
    assert cv.cli([str(tmp_path / "missing.pth"), str(tmp_path / "x.pkl")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: checkpoint not found") and "nothing was written" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "x.pkl").exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_checkpoint_is_named_as_such(r50_state, tmp_path, damage):
    """A damaged file is reported as unreadable, never as 'pass --allow-pickle'."""
    src = tmp_path / "r50.pth"
    torch.save({"state_dict": r50_state}, src)
    data = src.read_bytes()
    src.write_bytes(
        {"truncated": data[: len(data) // 2], "garbage": b"\x80\x02garbage" * 9, "empty": b""}[
            damage
        ]
    )
    with pytest.raises(cv.ConversionError, match="not a readable checkpoint") as e:
        cv.load_any(src)
    assert "--allow-pickle" not in str(e.value)


def _what(tmp_path, name, write):
    path = tmp_path / name
    write(path)
    with pytest.raises(cv.ConversionError) as e:
        cv.load_any(path)
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and "\x1b" not in msg and "--allow-pickle" not in msg
    return msg


def test_a_file_of_another_kind_is_named_with_what_to_pass(tmp_path):
    """An image, a text file, a pickled list, a whole pickled model: one clean line each
    saying what the file is and what to pass instead."""
    import torchvision
    from PIL import Image

    msg = _what(tmp_path, "r50.pth", lambda p: Image.new("RGB", (8, 8)).save(p, "JPEG"))
    assert msg.endswith(
        "r50.pth is a JPEG image, not a checkpoint: pass the pretrained weights (a .pth / .pt "
        "/ .tar checkpoint or a Detectron2 .pkl)"
    )
    assert "is a PNG image" in _what(
        tmp_path, "w.pkl", lambda p: Image.new("L", (4, 4)).save(p, "PNG")
    )
    assert "is a text file" in _what(tmp_path, "w.pt", lambda p: p.write_text("epoch: 3\n"))
    msg = _what(tmp_path, "l.pth", lambda p: pickle.dump([1, 2], p.open("wb")))
    assert "holds a Python object of type list, not a checkpoint dict" in msg
    msg = _what(tmp_path, "m.pth", lambda p: torch.save(torchvision.models.resnet18(), p))
    assert "type torchvision.models.resnet.ResNet, not a checkpoint dict" in msg
    assert "torch.save(model.state_dict(), path)" in msg
    msg = _what(tmp_path, "t.pth", lambda p: torch.save((torch.zeros(1),), p))
    assert "of type tuple" in msg


def test_convert_runs_from_its_file_path(r50_state, tmp_path):
    """``python transfer/convert.py IN OUT`` works like ``python -m transfer.convert``."""
    src = tmp_path / "r50.pth"
    torch.save(r50_state, src)
    res = subprocess.run(
        [sys.executable, "transfer/convert.py", str(src), str(tmp_path / "r50.pkl")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "r50.pkl").is_file() and "ResNet-50" in res.stdout


def test_d2_names_invert_to_torchvision(r50_state):
    for k in r50_state:
        if not k.startswith("fc."):
            assert cv.d2_to_torchvision_name(cv.torchvision_to_d2_name(k)) == k
