"""What a generation returns. Torch-free on purpose: the router unpickles it, and must not import torch."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class GeneratedImage:
    data: bytes
    seed: int
    format: str


@dataclass
class GenerationResult:
    images: list[GeneratedImage]
    width: int
    height: int
    steps: int
    scheduler: str
    timings: dict[str, float] = field(default_factory=dict)
