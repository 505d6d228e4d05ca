"""The detection protocols' configs: key values, the chained bases, the smoke overlay."""

from __future__ import annotations

import pytest

from transfer.detection.config import CONFIG_DIR, PROTOCOLS, build_config, smoke_datasets

COMMON = {  # every protocol: the inputs of self-supervised (torchvision) weights
    "MODEL.PIXEL_MEAN": [123.675, 116.280, 103.530],
    "MODEL.PIXEL_STD": [58.395, 57.120, 57.375],
    "INPUT.FORMAT": "RGB",
    "MODEL.RESNETS.STRIDE_IN_1X1": False,
    "MODEL.RESNETS.DEPTH": 50,
}
MOCO = {  # MoCo's detection protocol (CARE's): nothing frozen, precise BN, batch 16
    "MODEL.BACKBONE.FREEZE_AT": 0,
    "TEST.PRECISE_BN.ENABLED": True,
    "SOLVER.IMS_PER_BATCH": 16,
    "SOLVER.BASE_LR": 0.02,
}
EXPECTED = {
    "voc_c4_24k": {
        "MODEL.ROI_HEADS.NAME": "Res5ROIHeadsExtraNorm",
        "MODEL.RESNETS.NORM": "naiveSyncBN",
        "MODEL.MASK_ON": False,
        "MODEL.ROI_HEADS.NUM_CLASSES": 20,
        "MODEL.RPN.PRE_NMS_TOPK_TEST": 6000,
        "MODEL.RPN.POST_NMS_TOPK_TEST": 1000,
        "INPUT.MIN_SIZE_TRAIN": tuple(range(480, 801, 32)),
        "INPUT.MIN_SIZE_TEST": 800,
        "DATASETS.TRAIN": ("voc_2007_trainval", "voc_2012_trainval"),
        "DATASETS.TEST": ("voc_2007_test",),
        "SOLVER.MAX_ITER": 24000,
        "SOLVER.STEPS": (18000, 22000),
        "SOLVER.WARMUP_ITERS": 100,
    },
    "coco_c4_1x": {
        "MODEL.ROI_HEADS.NAME": "Res5ROIHeadsExtraNorm",
        "MODEL.MASK_ON": True,
        "MODEL.ROI_HEADS.NUM_CLASSES": 80,
        "INPUT.MIN_SIZE_TRAIN": tuple(range(640, 801, 32)),
        "DATASETS.TRAIN": ("coco_2017_train",),
        "DATASETS.TEST": ("coco_2017_val",),
        "SOLVER.MAX_ITER": 90000,
        "SOLVER.STEPS": (60000, 80000),
    },
    "coco_c4_2x": {
        "MODEL.ROI_HEADS.NAME": "Res5ROIHeadsExtraNorm",
        "MODEL.MASK_ON": True,
        "SOLVER.MAX_ITER": 180000,
        "SOLVER.STEPS": (120000, 160000),
    },
    "voc_fpn_144k": {
        "MODEL.BACKBONE.NAME": "build_resnet_fpn_backbone",
        "MODEL.RESNETS.NORM": "FrozenBN",
        "MODEL.BACKBONE.FREEZE_AT": 0,  # ssl-transfer's finetune/*.yaml at HEAD (c2cf033)
        "MODEL.ROI_HEADS.NAME": "StandardROIHeads",
        "MODEL.MASK_ON": False,
        "MODEL.ROI_BOX_HEAD.NUM_FC": 2,
        "MODEL.ROI_HEADS.NUM_CLASSES": 20,
        "MODEL.RPN.POST_NMS_TOPK_TRAIN": 1000,
        "INPUT.MIN_SIZE_TRAIN": tuple(range(480, 801, 32)),
        "INPUT.MIN_SIZE_TEST": 800,
        "DATASETS.TRAIN": ("voc_2007_trainval", "voc_2012_trainval"),
        "DATASETS.TEST": ("voc_2007_test",),
        "SOLVER.IMS_PER_BATCH": 2,
        "SOLVER.BASE_LR": 0.0025,
        "SOLVER.STEPS": (96000, 128000),
        "SOLVER.MAX_ITER": 144000,
        "SOLVER.WARMUP_ITERS": 100,
    },
    "coco_fpn_3x": {
        "MODEL.BACKBONE.NAME": "build_resnet_fpn_backbone",
        "MODEL.RESNETS.NORM": "FrozenBN",
        "MODEL.BACKBONE.FREEZE_AT": 0,  # ssl-transfer's finetune/*.yaml at HEAD (c2cf033)
        "MODEL.MASK_ON": True,
        "MODEL.ROI_HEADS.NUM_CLASSES": 80,
        "INPUT.MIN_SIZE_TRAIN": tuple(range(640, 801, 32)),
        "INPUT.MIN_SIZE_TEST": 800,
        "DATASETS.TRAIN": ("coco_2017_train",),
        "DATASETS.TEST": ("coco_2017_val",),
        "SOLVER.IMS_PER_BATCH": 16,
        "SOLVER.BASE_LR": 0.02,
        "SOLVER.STEPS": (210000, 250000),
        "SOLVER.MAX_ITER": 270000,
        "SOLVER.WARMUP_ITERS": 1000,
    },
    "coco_fpn_1x": {
        "MODEL.BACKBONE.NAME": "build_resnet_fpn_backbone",
        "MODEL.RESNETS.NORM": "SyncBN",
        "MODEL.FPN.NORM": "SyncBN",
        "MODEL.ROI_BOX_HEAD.NAME": "FastRCNNConvFCHead",
        "MODEL.ROI_BOX_HEAD.NUM_CONV": 4,
        "MODEL.ROI_BOX_HEAD.NUM_FC": 1,
        "MODEL.ROI_BOX_HEAD.NORM": "SyncBN",
        "MODEL.ROI_MASK_HEAD.NUM_CONV": 4,
        "MODEL.ROI_MASK_HEAD.NORM": "SyncBN",
        "MODEL.MASK_ON": True,
        "MODEL.ROI_HEADS.NUM_CLASSES": 80,
        "SOLVER.MAX_ITER": 90000,
        "SOLVER.STEPS": (60000, 80000),
        "SOLVER.WARMUP_ITERS": 1000,
    },
}


def get(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = cfg[part]
    return (
        tuple(cfg)
        if isinstance(cfg, (list, tuple)) and dotted.startswith(("DATASETS", "INPUT", "SOLVER"))
        else cfg
    )


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_protocol_values(protocol):
    cfg = build_config(protocol, device="cpu")
    moco = MOCO if protocol in ("voc_c4_24k", "coco_c4_1x", "coco_c4_2x", "coco_fpn_1x") else {}
    for key, value in {**COMMON, **moco, **EXPECTED[protocol]}.items():
        got = get(cfg, key)
        assert (list(got) if isinstance(value, list) else got) == value, key


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_smoke_overlay_changes_data_and_size_only(protocol):
    full, smoke = (
        build_config(protocol, device="cpu"),
        build_config(protocol, smoke=True, device="cpu"),
    )
    assert smoke.DATASETS.TRAIN == smoke_datasets(full.DATASETS.TRAIN)
    assert all(n.startswith("shapes_") for n in smoke.DATASETS.TEST)
    assert smoke.MODEL.ROI_HEADS.NUM_CLASSES == 6 and smoke.SOLVER.MAX_ITER == 30
    for key in (
        "MODEL.META_ARCHITECTURE",
        "MODEL.BACKBONE.NAME",
        "MODEL.RESNETS.NORM",
        "MODEL.ROI_HEADS.NAME",
        "MODEL.MASK_ON",
        "MODEL.PIXEL_MEAN",
        "INPUT.FORMAT",
    ):
        assert get(smoke, key) == get(full, key), key


def test_configs_chain_from_one_base():
    files = {p.name: p.read_text() for p in CONFIG_DIR.glob("*.yaml")}
    assert "PIXEL_MEAN" in files["Base-RCNN-SSL.yaml"]
    # the SSL inputs: once per protocol family (MoCo's / CARE's, and GSG's ssl-transfer one)
    assert [n for n, t in sorted(files.items()) if "PIXEL_MEAN" in t] == [
        "Base-RCNN-FPN-GSG.yaml",
        "Base-RCNN-SSL.yaml",
    ]
    assert '_BASE_: "Base-RCNN-FPN.yaml"' in files["Base-RCNN-FPN-GSG.yaml"]
    assert '_BASE_: "Base-RCNN-FPN-GSG.yaml"' in files["voc_fpn_144k.yaml"]
    assert '_BASE_: "Base-RCNN-FPN-GSG.yaml"' in files["coco_fpn_3x.yaml"]
    assert '_BASE_: "Base-RCNN-SSL.yaml"' in files["Base-RCNN-C4-SSL.yaml"]
    assert '_BASE_: "Base-RCNN-SSL.yaml"' in files["Base-RCNN-FPN-SSL.yaml"]
    assert '_BASE_: "Base-RCNN-FPN-SSL.yaml"' in files["coco_fpn_1x.yaml"]
    assert not [n for n in files if n.endswith("_smoke.yaml")]


def test_overrides_apply_and_bad_ones_are_named():
    cfg = build_config("voc_c4_24k", opts=["SOLVER.MAX_ITER", "100"], device="cpu")
    assert cfg.SOLVER.MAX_ITER == 100 and cfg.MODEL.DEVICE == "cpu"
    with pytest.raises(ValueError, match="SOLVER.MAX_ITR"):
        build_config("voc_c4_24k", opts=["SOLVER.MAX_ITR", "100"], device="cpu")
    with pytest.raises(ValueError, match="unknown protocol"):
        build_config("voc_fpn_9k")


def test_gsg_first_version_freeze_at_is_one_override_away():
    """ssl-transfer's first fine-tuning configs (3eb9196) kept detectron2's FREEZE_AT 2."""
    cfg = build_config("voc_fpn_144k", opts=["MODEL.BACKBONE.FREEZE_AT", "2"], device="cpu")
    assert cfg.MODEL.BACKBONE.FREEZE_AT == 2
