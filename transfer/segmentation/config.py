"""The segmentation protocol as a detectron2 config (``transfer/segmentation/configs``).

``ade20k_upernet``: the CSAIL toolkit's UPerNet R50 on ADE20K, as GSG / ssl-transfer run it.
The keys detectron2 lacks are added by ``add_upernet_config``; ``smoke=True`` merges
``smoke.yaml`` and swaps each dataset for its synthetic twin (``synthetic_<name>``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from common.cli import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
SMOKE_OVERLAY = CONFIG_DIR / "smoke.yaml"
SYNTHETIC_PREFIX = "synthetic_"

PROTOCOLS: dict[str, str] = {
    "ade20k_upernet": "ADE20K UPerNet R50 (CSAIL toolkit), 150k iterations at batch 4, "
    "5-scale test",
}

TOOLKIT_SHORT_SIDES = (300, 375, 450, 525, 600)


def add_upernet_config(cfg) -> None:
    """The protocol's keys that detectron2's defaults do not have (toolkit defaults)."""
    from detectron2.config import CfgNode

    cfg.MODEL.UPERNET = CfgNode()
    cfg.MODEL.UPERNET.POOL_SCALES = (1, 2, 3, 6)
    cfg.MODEL.UPERNET.PPM_DIM = 512
    cfg.MODEL.UPERNET.BN_MOMENTUM = 0.001  # the toolkit's SynchronizedBatchNorm2d
    cfg.MODEL.UPERNET.SIZE_DIVISIBILITY = 32  # padding_constant
    # The label of batch padding: the toolkit's zero-filled batch tensor is class 0 after its
    # label shift (a quirk kept by default); 255 ignores the padding (--ignore-padding).
    cfg.MODEL.UPERNET.BATCH_PAD_LABEL = 0
    cfg.INPUT.LABEL_DOWNSAMPLE = 4  # segm_downsampling_rate
    cfg.INPUT.TEST_SHORT_SIDES = TOOLKIT_SHORT_SIDES  # the 5 scales of the test
    cfg.INPUT.FLIP = True  # random_flip
    cfg.SOLVER.POLY_LR_POWER = 0.9  # lr_pow
    cfg.SUITE = CfgNode()
    cfg.SUITE.MAX_BAD_FRAC = 0.01  # unreadable training images allowed (then skipped)


def config_path(protocol: str) -> Path:
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    return CONFIG_DIR / f"{protocol}.yaml"


def smoke_datasets(names: Sequence[str]) -> tuple[str, ...]:
    """``ade20k_sem_seg_val`` -> ``synthetic_ade20k_sem_seg_val``."""
    return tuple(SYNTHETIC_PREFIX + n for n in names)


def build_config(
    protocol: str,
    smoke: bool = False,
    weights: str = "",
    opts: Sequence[str] = (),
    device: str | None = None,
    freeze: bool = True,
):
    """``get_cfg() + add_upernet_config -> merge_from_file [-> smoke overlay] ->
    merge_from_list(opts) -> freeze()``; ``weights``: a Detectron2 ``.pkl`` ("" = random)."""
    import torch
    from detectron2.config import get_cfg

    import transfer.segmentation.modeling  # noqa: F401  (registers UPerNetSegmentor / Head)

    cfg = get_cfg()
    add_upernet_config(cfg)
    cfg.merge_from_file(str(config_path(protocol)))
    if smoke:
        cfg.merge_from_file(str(SMOKE_OVERLAY))
        cfg.DATASETS.TRAIN = smoke_datasets(cfg.DATASETS.TRAIN)
        cfg.DATASETS.TEST = smoke_datasets(cfg.DATASETS.TEST)
    cfg.MODEL.WEIGHTS = str(weights)
    cfg.MODEL.DEVICE = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        cfg.merge_from_list(list(opts))
    except (KeyError, ValueError, AssertionError) as e:
        raise ConfigError(f"config overrides {list(opts)}: {e}") from e
    if cfg.SOLVER.IMS_PER_BATCH < 1:
        raise ConfigError(f"SOLVER.IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH}: must be >= 1")
    if cfg.MODEL.UPERNET.SIZE_DIVISIBILITY % cfg.INPUT.LABEL_DOWNSAMPLE:
        raise ConfigError(
            "MODEL.UPERNET.SIZE_DIVISIBILITY must be a multiple of INPUT.LABEL_DOWNSAMPLE "
            "(the toolkit asserts padding_constant >= segm_downsampling_rate)"
        )
    if freeze:
        cfg.freeze()
    return cfg
