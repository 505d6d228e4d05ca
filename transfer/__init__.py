"""Checkpoint conversion and the transfer protocols (Detectron2 detection runners)."""

from common.quiet import silence_known_warnings

silence_known_warnings()
