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
    # batch_size_per_gpu: the toolkit's 4 images are 2 GPUs x 2; a group shares a short side,
    # an orientation, a padded size and a loss mean (loader.OrientationBatchSampler)
    cfg.INPUT.IMS_PER_GROUP = 2
    cfg.SOLVER.POLY_LR_POWER = 0.9  # lr_pow


def config_path(protocol: str) -> Path:
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    return CONFIG_DIR / f"{protocol}.yaml"


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
    import transfer.segmentation.modeling  # noqa: F401  (registers UPerNetSegmentor / Head)
    from transfer.d2engine import protocol_config

    files = [config_path(protocol)] + ([SMOKE_OVERLAY] if smoke else [])
    cfg = protocol_config(files, SYNTHETIC_PREFIX if smoke else None, weights, opts, device,
                          extend=add_upernet_config)  # fmt: skip
    if cfg.SOLVER.IMS_PER_BATCH < 1 or cfg.INPUT.IMS_PER_GROUP < 1:
        raise ConfigError("SOLVER.IMS_PER_BATCH and INPUT.IMS_PER_GROUP must be >= 1")
    if cfg.SOLVER.IMS_PER_BATCH % cfg.INPUT.IMS_PER_GROUP:
        raise ConfigError(
            f"SOLVER.IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH} is not a multiple of "
            f"INPUT.IMS_PER_GROUP {cfg.INPUT.IMS_PER_GROUP} (the images of one group)"
        )
    if cfg.MODEL.UPERNET.SIZE_DIVISIBILITY % cfg.INPUT.LABEL_DOWNSAMPLE:
        raise ConfigError(
            "MODEL.UPERNET.SIZE_DIVISIBILITY must be a multiple of INPUT.LABEL_DOWNSAMPLE "
            "(the toolkit asserts padding_constant >= segm_downsampling_rate)"
        )
    if freeze:
        cfg.freeze()
    return cfg
