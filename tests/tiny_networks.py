"""Tiny networks with the layer layout (module names) of the evaluation's real networks.

Weights of AlexNet, Inception v3, EfficientNet-B1, SwAV and CLIP cannot be fetched here, and
torchvision cannot be imported beside this CPU torch build; these stand-ins keep the modules
that the evaluation reads (``features.4``, ``features.11``, ``avgpool``, ...) under their real
names so that the hooks, shapes and preprocessing are tested for real.
"""

from __future__ import annotations

import torch
from torch import nn


class TinyAlexNet(nn.Module):
    """torchvision's AlexNet layout (features 0-12 / avgpool / classifier 0-6), narrow channels."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 11, 4, 2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(4, 6, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(6, 8, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(8, 5, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(),
            nn.Linear(5 * 36, 12),
            nn.ReLU(),
            nn.Dropout(),
            nn.Linear(12, 7),
            nn.ReLU(),
            nn.Linear(7, 3),
        )

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class TinyPooled(nn.Module):
    """A convolutional trunk, ``avgpool`` (global) and a classifier: the part of Inception v3,
    EfficientNet-B1 and ResNet-50 (SwAV) that the evaluation reads, at 6 channels."""

    def __init__(self, channels: int = 6):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, channels, 7, 4, 3), nn.ReLU(), nn.Conv2d(channels, channels, 3, 2, 1)
        )
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(channels, 4)

    def forward(self, x):
        return self.fc(torch.flatten(self.avgpool(self.features(x)), 1))


def tiny_alexnet(seed: int = 0) -> TinyAlexNet:
    torch.manual_seed(seed)
    return TinyAlexNet()


def tiny_pooled(seed: int = 0) -> TinyPooled:
    torch.manual_seed(seed)
    return TinyPooled()


def tiny_clip_vision(image_size: int = 224):
    """A 2-layer ``CLIPVisionModelWithProjection`` (hidden 32, embedding 16) at ``image_size``."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=14,
        projection_dim=16,
    )
    return CLIPVisionModelWithProjection(config).eval()
