"""Self-supervised pretraining of CNN backbones (CARE, BYOL, SimSiam, GSG, MaskCo)."""

from common.quiet import silence_known_warnings

silence_known_warnings()
