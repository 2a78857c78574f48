"""The mode worker: one replica serving one mode's checkpoint (residency, containment, progress)."""
