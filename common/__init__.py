"""Helpers shared by every package of the suite; imports no other package of the suite.

``atomic`` (crash-safe file writes), ``archs`` (the one table of ResNet architectures),
``checkpoints`` (reading any common checkpoint format down to a torchvision ResNet body),
``cli`` (exit codes and the one error wrapper of every command), ``signals`` (stop on
SIGINT / SIGTERM at a step boundary), ``distributed`` (decisions every rank takes alike),
``quiet`` (known third-party deprecation noise, silenced in one place).
"""
