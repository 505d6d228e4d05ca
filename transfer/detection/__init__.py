"""Detection transfer: Detectron2 configs, datasets, evaluators, the trainer and planning
of VOC07+12 Faster R-CNN and COCO Mask R-CNN seeds (``transfer/run_voc.py``, ``run_coco.py``)."""
