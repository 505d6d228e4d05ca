"""The frozen or fine-tuned torchvision ResNet every non-detection family reads features from.

``FeatureResNet`` is a torchvision ResNet returning the requested stages: ``conv1`` (after
conv1-bn-relu, before the max-pool, as OpenSelfSup's ResNet outputs it) and ``res2`` ..
``res5`` (torchvision's layer1 .. layer4); for the CIFAR stem (``resnet18_cifar``) ``conv1``
is conv1-bn (ReLU as the checkpoint was trained) and the max-pool an identity.
``load_backbone`` fills it from any checkpoint the converter accepts and proves every tensor
arrived.
"""

from __future__ import annotations

import torch
from torch import nn

from common.archs import Arch, build_resnet
from common.checkpoints import CheckpointError, read_backbone

STAGES = ("conv1", "res2", "res3", "res4", "res5")


def stage_channels(arch: Arch) -> dict[str, int]:
    """Output channels per stage (wide ResNets widen only the inner 3x3 convs)."""
    e = 4 if arch.bottleneck else 1
    return {"conv1": 64, "res2": 64 * e, "res3": 128 * e, "res4": 256 * e, "res5": 512 * e}


class FeatureResNet(nn.Module):
    """A torchvision ResNet body (no fc) that returns the feature maps of ``stages``."""

    def __init__(self, arch: Arch, stem_relu: bool | None = None):
        super().__init__()
        self.arch = arch
        net = build_resnet(arch, stem_relu=stem_relu)
        del net.fc
        self.body = net

    def forward(self, x: torch.Tensor, stages: tuple[str, ...] = ("res5",)) -> dict:
        """x (N, 3, H, W) -> {stage: (N, C_stage, H_s, W_s)} for the requested stages."""
        b, out = self.body, {}
        x = b.relu(b.bn1(b.conv1(x)))
        if "conv1" in stages:
            out["conv1"] = x
        x = b.maxpool(x)
        last = max(STAGES.index(s) for s in stages)
        for k, layer in enumerate((b.layer1, b.layer2, b.layer3, b.layer4), start=1):
            if k > last:
                break
            x = layer(x)
            if STAGES[k] in stages:
                out[STAGES[k]] = x
        return out


def load_backbone(weights: str, arch: Arch | None, allow_pickle: bool = False):
    """(FeatureResNet, number of tensors verified). ``weights`` "" means random init of
    ``arch``; otherwise the body is read, loaded, then compared tensor by tensor."""
    if not weights:
        if arch is None:
            raise CheckpointError("random initialisation needs an architecture (--arch)")
        torch.manual_seed(0)  # the same random backbone for every seed and protocol
        return FeatureResNet(arch), 0
    body = read_backbone(weights, allow_pickle=allow_pickle)
    model = FeatureResNet(body.arch, stem_relu=body.stem_relu)
    missing, unexpected = model.body.load_state_dict(body.tensors, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise CheckpointError(
            f"{weights}: the {body.arch.name} body does not match torchvision's: "
            f"{len(missing)} missing {missing[:4]}, {len(unexpected)} unexpected {unexpected[:4]}"
        )
    return model, verify_loaded(model, body.tensors, weights)


def verify_loaded(model: FeatureResNet, tensors: dict, weights: str) -> int:
    """Fail unless every tensor of ``tensors`` equals the backbone's; returns the count."""
    state = model.body.state_dict()
    wrong = [k for k, v in tensors.items() if k not in state or not torch.equal(state[k], v)]
    if wrong:
        raise CheckpointError(f"the backbone was not loaded from {weights}: {wrong[:5]} differ")
    return len(tensors)
