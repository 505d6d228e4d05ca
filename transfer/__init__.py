"""Checkpoint conversion and Detectron2 transfer runners (VOC07+12, COCO)."""
