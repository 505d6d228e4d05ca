"""Classification transfer: the ImageNet linear, multi-layer, kNN and semi-supervised protocols."""
