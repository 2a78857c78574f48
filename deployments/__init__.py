"""Ray pieces of Dream Lab: router ingress, mode worker, VRAM registry."""
