"""ADE20K semantic segmentation (UPerNet R50, the CSAIL toolkit's protocol) on detectron2."""
