"""The application's `args` in a Serve config (the registry's settings included), and the names and
default options of the deployments the builder makes from them."""

from __future__ import annotations

from typing import Any

from pydantic import Field, IPvAnyNetwork, ValidationError

from serve_app.core.errors import ConfigError
from serve_app.core.strict_model import StrictModel, config_error_text

GiB = 1024**3

# Deployment names of the application's own pieces; a mode may not take them (each mode is a deployment).
ROUTER_DEPLOYMENT = "Router"
REGISTRY_DEPLOYMENT = "VramRegistry"
TASKS_DEPLOYMENT = "TaskStore"
RESERVED_DEPLOYMENT_NAMES = frozenset({ROUTER_DEPLOYMENT, REGISTRY_DEPLOYMENT, TASKS_DEPLOYMENT})

# Defaults for every mode deployment; the Serve config's `deployments:` list overrides them per mode.
MODE_DEPLOYMENT_DEFAULTS: dict[str, Any] = {
    "max_ongoing_requests": 2,
    "max_queued_requests": 64,
    "graceful_shutdown_timeout_s": 300,
    "graceful_shutdown_wait_loop_s": 1,
    "health_check_period_s": 10,
    "ray_actor_options": {"num_cpus": 0},
}


class RegistryConfig(StrictModel):
    """Registry settings (the `registry` block of the application args)."""

    simulated_vram_bytes: int = Field(8 * GiB, ge=0, description="Device size where no CUDA reports one.")
    budget_bytes: int | None = Field(None, ge=0, description="Per-device budget; default: total - headroom.")
    headroom_bytes: int = Field(512 * 1024**2, ge=0,
                                description="Kept free on each device (CUDA context, fragmentation).")
    heartbeat_interval_s: float = Field(0.5, gt=0, description="How often replicas report.")
    dead_after_s: float = Field(6.0, gt=0, description="A replica silent this long is dropped.")
    reservation_ttl_s: float = Field(300.0, gt=0, description="A reservation not turned into a registration expires.")
    reserve_timeout_s: float = Field(120.0, gt=0, description="How long a load waits for evictions and busy models.")
    working_timeout_s: float = Field(15.0, gt=0, description="How long a large request waits for its extra working "
                                     "memory (evictions, busy neighbours) before it answers 507.")
    ram_budget_bytes: int = Field(8 * GiB, ge=0, description="Host memory per node that the RAM tier may hold "
                                  "(evicted models kept for a fast switch back); 0 turns the tier off.")


class PlacementConfig(StrictModel):
    """How mode replicas are placed on GPUs: Ray's GPU accounting (`num_gpus` of each mode's
    `ray_actor_options`) decides which card a replica gets; the VRAM registry decides what fits in its memory."""

    default_num_gpus: float | None = Field(None, ge=0, le=1, description="`num_gpus` given to a mode that names "
                                           "none. None (the default): on a cluster with GPUs such a mode is refused "
                                           "at build time, naming it. 0: such modes run on the CPU (the GPUs are "
                                           "hidden from them); a fraction packs them onto shared cards.")


class AccessConfig(StrictModel):
    """Who may call the API. Off (everything open, as in the demo) unless a key source is named. Keys never
    sit in YAML: name an environment variable (comma-separated keys) or a file (one key per line)."""

    api_keys_env: str | None = Field(None, description="Environment variable with the client API keys.")
    api_keys_file: str | None = Field(None, description="File with the client API keys, one per line.")
    admin_key_env: str | None = Field(None, description="Environment variable with the admin key(s).")
    admin_key_file: str | None = Field(None, description="File with the admin key(s), one per line.")
    trusted_proxies: list[IPvAnyNetwork] = Field(
        default_factory=list, description="Proxies (addresses or networks, e.g. 10.0.0.0/8) whose "
        "`X-Forwarded-For` names the client; none by default: a client is its connection's address.")


class FairShareConfig(StrictModel):
    """How the router shares each mode between clients (API keys, else client addresses). The router sends
    a mode's requests on as its live replicas can take them (`max_ongoing_requests` each); the rest wait in
    the router, at most the mode's `max_queued_requests`, and leave round-robin by client."""

    max_waiting_per_client: int = Field(32, ge=1, description="Requests one client may have waiting per mode; "
                                        "more get 503 + Retry-After.")


class TasksConfig(StrictModel):
    """Async tasks (`/v1/tasks`): how long results stay, how many tasks are held, where webhooks may go."""

    result_ttl_s: float = Field(3600.0, gt=0, description="A finished task (and its result) is kept this long.")
    max_tasks: int = Field(1000, ge=1, description="Tasks held at once by all clients (unfinished and stored); "
                           "more get 503.")
    max_tasks_per_client: int = Field(100, ge=1, description="Tasks one client holds at once (unfinished and "
                                      "stored); more get 429.")
    max_queued_per_client: int = Field(16, ge=1, description="Unfinished tasks of one client; more get 429.")
    max_result_bytes_per_client: int = Field(2 * 1024**3, ge=1, description="Bytes of stored results of one "
                                             "client; a submission past it gets 429.")
    running_per_mode: int = Field(1, ge=1, description="Tasks sent to one mode at once; the others wait, taken "
                                  "round-robin by client, so tasks leave room for direct requests.")
    call_timeout_s: float = Field(900.0, gt=0, description="A task's call to its mode replica may take this long "
                                  "(then it fails with 504 and frees its slot).")
    state_dir: str | None = Field(None, description="Where the task database (SQLite) and the result files live; "
                                  "default: $DREAMLAB_STATE_DIR, else `.dreamlab-state` in the model root.")
    database_url: str | None = Field(None, description="A PostgreSQL URL (`postgresql://user:pass@host/db`) for "
                                     "the task database instead of SQLite; default: $DREAMLAB_TASKS_DATABASE_URL. "
                                     "Results still go to `state_dir` (a shared volume when several nodes run "
                                     "the store).")
    webhook_allowed_hosts: list[str] = Field(default_factory=list, description="Targets webhooks may call, as "
                                             "`[scheme://]host[:port]` (no scheme: http or https; no port: the "
                                             "scheme's default; '.example.com' for its subdomains); none: webhooks "
                                             "are refused.")
    webhook_allowed_networks: list[IPvAnyNetwork] = Field(
        default_factory=list, description="Loopback, private or link-local networks webhooks may reach (e.g. "
        "127.0.0.0/8); targets resolving there are refused otherwise.")
    webhook_secret_env: str = Field("DREAMLAB_WEBHOOK_SECRET", description="Environment variable with the secret "
                                    "webhook bodies are signed with (HMAC-SHA256); unset: webhooks are refused.")
    webhook_attempts: int = Field(4, ge=1, le=10, description="Deliveries tried before giving up.")
    webhook_backoff_s: float = Field(0.5, gt=0, description="Wait before the 2nd try; doubled each time.")


class WorkerTimeoutsConfig(StrictModel):
    """How long the router waits on a mode replica (or the TaskStore) before it answers 504 and frees the
    request's slot (a hung replica, a stuck thread). Generous: they bound hangs, not slow work."""

    generate_s: float = Field(900.0, gt=0, description="A whole generation (direct routes).")
    stream_idle_s: float = Field(300.0, gt=0, description="The longest wait for the next progress event of a "
                                 "streamed generation (a cold load comes before the first).")
    job_s: float = Field(900.0, gt=0, description="A custom job.")
    load_s: float = Field(1800.0, gt=0, description="A mode load (`/v1/modes/{name}/load`: may convert a file).")
    unload_s: float = Field(60.0, gt=0, description="A mode unload.")
    task_store_s: float = Field(30.0, gt=0, description="A call to the TaskStore (submit, read or cancel a task, "
                                "store or read a URL image).")


class HttpLimitsConfig(StrictModel):
    """Request bodies bounded before any route runs (see `deployments.router.body_guard`)."""

    max_body_bytes: int = Field(48 * 1024 * 1024, ge=1024, description="Largest request body (413 over it): an "
                                "init image at its 32 MiB limit is 42.7 MiB of base64, plus the JSON around it.")
    body_timeout_s: float = Field(60.0, gt=0, description="A whole body must arrive within this (408).")
    body_idle_timeout_s: float = Field(10.0, gt=0, description="Longest gap between two chunks of a body (408).")
    max_unread_bodies_per_client: int = Field(8, ge=1, description="Bodies one client may have arriving at once "
                                              "(503 + Retry-After past it).")


class AppArgs(StrictModel):
    """The `args` of the application in a Serve config."""

    modes_file: str | None = Field(None, description="Modes YAML; without it, MODEL or discovery (see README).")
    model_root: str | None = Field(None, description="Where checkpoints live; default: $MODEL_ROOT or ./models.")
    demo_models: bool = Field(False, description="Write the tiny demo checkpoints into model_root when missing.")
    registry: RegistryConfig = Field(default_factory=RegistryConfig, description="VRAM registry settings.")
    placement: PlacementConfig = Field(default_factory=PlacementConfig, description="GPU placement of the modes.")
    access: AccessConfig = Field(default_factory=AccessConfig, description="API keys (off unless named).")
    fair_share: FairShareConfig = Field(default_factory=FairShareConfig, description="Sharing modes between "
                                        "clients.")
    tasks: TasksConfig = Field(default_factory=TasksConfig, description="Async tasks and their webhooks.")
    timeouts: WorkerTimeoutsConfig = Field(default_factory=WorkerTimeoutsConfig, description="Calls from the "
                                           "router to mode replicas.")
    http: HttpLimitsConfig = Field(default_factory=HttpLimitsConfig, description="Request bodies: size and time "
                                   "limits applied before any route runs.")


def parse_app_args(args: dict[str, Any] | None) -> AppArgs:
    try:
        return AppArgs.model_validate(args or {})
    except ValidationError as exc:
        param, message = config_error_text("application args", exc)
        raise ConfigError(message, param=param) from exc
