"""Which modes may share a GPU, from their `num_gpus` fractions (Ray's GPU accounting places replicas whose
fractions sum to at most 1 on one card; the VRAM ledger then decides what really fits in its memory)."""

from __future__ import annotations

from deployments.protocol import ModePlacement

EPSILON = 1e-9  # fractions are floats: 0.3 + 0.7 is 1 here


def mode_placement(fractions: dict[str, float]) -> list[ModePlacement]:
    """Per mode (sorted by name): its fraction and the GPU modes one of whose replicas fits beside one of its."""
    out = []
    for mode, share in sorted(fractions.items()):
        partners = [other for other, theirs in sorted(fractions.items())
                    if share > 0 and theirs > 0 and share + theirs <= 1 + EPSILON
                    and (other != mode or 2 * share <= 1 + EPSILON)]
        out.append(ModePlacement(mode=mode, num_gpus=share, shares_card_with=partners))
    return out
