"""Everything that crosses an actor boundary between the router, the mode workers and the registry.

Router -> mode worker: a resolved `GenerationRequest` (from the model layer, so the runner takes it as
is); back: a `GenerationResult`, or while streaming `ProgressEvent`s then the result. Operator actions
answer `LoadAnswer` / `UnloadAnswer`. Mode worker <-> registry: `ReserveAnswer` for a load (or a large
request's extra working memory), `Registration` when it is done, `Offloaded` when an evicted model moved to
the RAM tier, `HeartbeatReport` / `HeartbeatAnswer` every beat. Router <-> registry:
`RouterPollAnswer`, `InflightCounts` and `RegistryStats` (also the body of `GET /v1/registry`).
"""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict, Field

from serve_app.model.generation.job import GenerationRequest, GenerationResult, ProgressEvent
from serve_app.model.model_state import ModelState, Tier

__all__ = [
    "AddedMode", "DeviceLine", "EntryState", "GenerationRequest", "GenerationResult", "HeartbeatAnswer",
    "HeartbeatReport", "HostComponent", "InflightCounts", "LoadAnswer", "ModePlacement", "ModelState", "Offloaded",
    "OperatorState",
    "ProcessMemory", "ProgressEvent", "Registration", "RegistryStats", "ReserveAnswer", "ReserveStatus",
    "RouterPollAnswer", "Tier", "UnloadAnswer",
]


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- mode worker -> registry ---------------------------------------------------------------------------
class HostComponent(Message):
    """A component file whose weights a replica holds mapped in host memory: every replica of the node that
    maps the same file shares one copy (the page cache's), so the registry books it once per node."""

    identity: str = Field(description="The mapped file (device, inode, size, mtime) and the key prefix used.")
    path: str = Field(description="The component's file, as the mode names it.")
    kind: str = Field(description="clip_l, clip_g, t5xxl, vae, transformer or unet.")
    host_bytes: int = Field(description="Bytes of the weights held in the mapping.")


class Registration(Message):
    """A load finished: what the model really holds on its device."""

    replica: str
    mode: str
    device: str
    footprint_bytes: int = Field(description="Measured load + working memory at the mode's limits.")
    estimate_bytes: int = Field(description="The estimate the reservation was made with.")
    measured_bytes: int = Field(description="What the load itself took.")
    epoch: int = Field(description="Counts the replica's loads and unloads: a stale report cannot undo a newer one.")
    components: list[HostComponent] = Field(default_factory=list, description="The component files the model maps "
                                            "in host memory (on a CPU device, its weights are those mappings).")


class Offloaded(Message):
    """An evicted model moved from its device to its node's host memory (the RAM tier)."""

    replica: str
    mode: str
    device: str
    host_bytes: int = Field(description="What the model holds in host memory beyond its mapped component files.")
    last_use: float
    epoch: int
    components: list[HostComponent] = Field(default_factory=list, description="Its mapped component files.")


class ProcessMemory(Message):
    """What one replica's process holds on its GPU, as CUDA reports it (`DeviceProbe.process_memory`)."""

    context_bytes: int = Field(description="The CUDA context and other memory outside PyTorch's allocator (NVML's "
                               "per-process use minus the allocator's reserve, else an estimate).")
    allocator_reserved_bytes: int = Field(description="`torch.cuda.memory_reserved`: what the allocator holds.")
    allocator_allocated_bytes: int = Field(description="`torch.cuda.memory_allocated`: what tensors use of it.")

    @property
    def cache_bytes(self) -> int:
        """Reserved but unused: the allocator's cache, returned to the driver by `torch.cuda.empty_cache`."""
        return max(0, self.allocator_reserved_bytes - self.allocator_allocated_bytes)

    @property
    def process_bytes(self) -> int:
        """Everything the process holds on the device: its context and the allocator's reserve."""
        return self.context_bytes + self.allocator_reserved_bytes


class HeartbeatReport(Message):
    mode: str
    device: str
    state: ModelState
    tier: Tier
    host_bytes: int = Field(description="What the model holds in host memory (the RAM tier) beyond its mapped "
                            "component files, else 0.")
    components: list[HostComponent] = Field(default_factory=list, description="The component files the model "
                                            "maps in host memory (held there in the RAM tier, or on a CPU device).")
    epoch: int
    inflight: int
    footprint_bytes: int
    measured_bytes: int
    estimate_bytes: int
    last_use: float = Field(description="Wall-clock time of the last generation (0: never).")
    total_bytes: int | None = Field(description="Device size from CUDA; None: the registry simulates one.")
    reported_used_bytes: int | None = Field(description="Device use by every process (driver view), CUDA only.")
    process: ProcessMemory | None = Field(None, description="This replica's own use of the device (CUDA only).")
    gpu_fraction: float | None = Field(None, description="The `num_gpus` Ray placed this replica with (0: none).")


class HeartbeatAnswer(Message):
    evict: Tier | None = Field(None, description="The registry evicts this replica's model, when idle: `ram` "
                               "moves it to host memory, `disk` drops it.")
    evict_from: Tier | None = Field(None, description="The tier the eviction is about (`vram` or `ram`): a model "
                                    "that has moved since is left alone.")
    return_cache: bool = Field(False, description="A neighbour waits for room: return the allocator's cache to "
                               "the driver (`torch.cuda.empty_cache`) and report again.")
    draining: bool
    backlog: int = Field(0, description="Requests of this replica's mode waiting in the routers' fair queues "
                         "(what Serve's autoscaler is told, see `record_autoscaling_stats`).")


class ReserveStatus(str, Enum):
    GRANTED = "granted"
    EVICTING = "evicting"  # idle models were told to unload: ask again
    WAITING_BUSY = "waiting_busy"  # fits once busy models go idle: ask again
    NO_FIT = "no_fit"  # not even evicting everything on the device makes room


class ReserveAnswer(Message):
    status: ReserveStatus
    needed_bytes: int
    free_bytes: int
    budget_bytes: int
    busy_modes: list[str] = Field(default_factory=list)
    evicting: list[str] = Field(default_factory=list)
    returning_cache: list[str] = Field(default_factory=list, description="Modes whose replicas were asked to "
                                       "return their allocator cache for this reservation.")


# -- router <-> registry ---------------------------------------------------------------------------------
class AddedMode(Message):
    """A mode a checkpoint refresh added at run time: one mode deployment in its own Serve application."""

    name: str
    checkpoint: str = Field(description="Its file or folder, relative to MODEL_ROOT (as discovery names it).")
    app: str = Field(description="The Serve application that serves it (`<app>--<mode>`).")


class OperatorState(Message):
    """What operators set at run time. The registry and every router hold a copy; each router poll sends
    its copy and gets the registry's back, and the higher `version` wins on both sides, so the state
    survives a restart of the registry or of any router (one at a time)."""

    default_mode: str | None = Field(None, description="Set by a switch (A1111 options); None: the configured one.")
    draining: bool = Field(False, description="`dreamlab shutdown` is draining the application.")
    added_modes: list[AddedMode] = Field(default_factory=list, description="Modes refresh-checkpoints added.")
    removed_modes: list[str] = Field(default_factory=list, description="Configured modes whose checkpoint left "
                                     "MODEL_ROOT (refresh-checkpoints took them out of the catalogs).")
    version: int = Field(0, description="Grows with each change.")


class RouterPollAnswer(Message):
    state: OperatorState
    replicas: dict[str, int] = Field(description="Live replicas per mode, as heartbeats tell.")


class InflightCounts(Message):
    routers: int
    replicas: int


class EntryState(str, Enum):
    READY = "ready"
    EVICTING = "evicting"


class ModelStats(BaseModel):
    """One model on a device. The registry keeps these (mutable: state, last use, in-flight count change)
    and answers copies."""

    model_config = ConfigDict(extra="forbid")

    mode: str
    replica: str
    device: str
    footprint_bytes: int
    estimate_bytes: int
    measured_bytes: int
    state: EntryState
    evict_to: Tier | None = Field(None, description="Where an evicting model goes: `ram` or `disk`.")
    last_use: float
    epoch: int
    inflight: int


class RamModelStats(BaseModel):
    """One model in a node's RAM tier (mutable, like `ModelStats`)."""

    model_config = ConfigDict(extra="forbid")

    mode: str
    replica: str
    node: str
    host_bytes: int = Field(description="Its own host memory (its shared component files are in `components`).")
    last_use: float
    epoch: int
    dropping: bool = Field(False, description="Pushed out of RAM for a newer offload: the replica drops it.")
    components: list[str] = Field(default_factory=list, description="Identities of the component files it maps.")


class SharedComponentStats(Message):
    """A component file held mapped in a node's host memory: one copy, whichever modes use it."""

    identity: str
    path: str
    kind: str
    host_bytes: int
    modes: list[str] = Field(description="The modes whose replicas hold it (in the RAM tier or on a CPU device).")
    replicas: list[str]
    ram_tier_modes: list[str] = Field(description="The modes holding it in the RAM tier: while any does, it is "
                                      "counted once in the node's `ram_used_bytes`.")


class DeviceLine(Message):
    """One replica's own line on a device: its CUDA context and its allocator's cache."""

    replica: str
    mode: str
    context_bytes: int
    cache_bytes: int


class DeviceStats(Message):
    device: str = Field(description="`<node id>:GPU-<uuid>` (a physical GPU, from CUDA), `<node id>:gpu<index>` "
                        "(a GPU Ray simulates without CUDA) or `<node id>:cpu`.")
    total_bytes: int
    budget_bytes: int
    used_bytes: int = Field(description="Sum of the footprints of the models on it.")
    reserved_bytes: int = Field(description="Held for loads in progress and for large requests' working memory.")
    context_bytes: int = Field(0, description="The replicas' CUDA contexts (see `lines`).")
    cache_bytes: int = Field(0, description="The replicas' allocator caches (reserved - allocated; see `lines`).")
    unaccounted_bytes: int = Field(0, description="What the driver sees in use beyond the replicas' own processes: "
                                   "other processes on the card.")
    accounted_bytes: int = Field(0, description="used + context + cache + unaccounted: the ledger's view.")
    free_bytes: int = Field(description="budget - the larger of (accounted + reserved) and the driver's used.")
    reported_used_bytes: int | None = Field(description="The driver's used (total - free, CUDA); decisions take "
                                            "the larger of it and the ledger.")
    simulated: bool = Field(description="No CUDA: the size is the configured simulated one.")
    models: list[ModelStats]
    lines: list[DeviceLine] = Field(default_factory=list, description="Each replica's context and cache.")


class NodeStats(Message):
    node: str
    ram_budget_bytes: int = Field(description="Host memory the RAM tier may hold on this node.")
    ram_used_bytes: int = Field(description="Held by offloaded models, and promised to offloads under way; each "
                                "shared component file counted once.")
    models: list[RamModelStats]
    components: list[SharedComponentStats] = Field(default_factory=list, description="Component files held once "
                                                   "in host memory, with the modes that share each.")


class ReplicaStats(Message):
    mode: str
    device: str
    inflight: int
    state: ModelState


class ModePlacement(Message):
    """A mode's share of a GPU (`num_gpus`) and the modes whose replicas Ray may put on the same card."""

    mode: str
    num_gpus: float = Field(description="0: the mode runs on its node's CPU.")
    shares_card_with: list[str] = Field(description="Modes with num_gpus > 0 whose fraction and this one's sum to "
                                        "at most 1 (one replica of each fits on one card).")


class RegistryStats(Message):
    devices: list[DeviceStats]
    placement: list[ModePlacement] = Field(default_factory=list, description="Per mode: its GPU fraction and the "
                                           "modes that may share a card with it.")
    nodes: list[NodeStats] = Field(default_factory=list, description="Host memory (the RAM tier) per node.")
    draining: bool
    replicas: dict[str, ReplicaStats] = Field(description="By replica id.")


# -- router -> mode worker: operator actions -----------------------------------------------------------
class LoadAnswer(Message):
    mode: str
    status: str = Field(description="`loaded`, or `already_loaded` (a no-op).")
    load_s: float | None
    load_tier: Tier | None = Field(None, description="Where the load came from: `disk`, or `ram` (a device copy).")
    replica: str


class UnloadAnswer(Message):
    mode: str
    status: str = Field(description="`unloaded`, or `already_unloaded`.")
    replica: str
