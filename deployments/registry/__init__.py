"""The VRAM registry: the ledger of every device, the RAM tier, and the operator state routers share."""
