"""Drain-first stop: readiness goes 503, new work is refused, in-flight work finishes, then Serve stops.

`serve.shutdown()` alone stops the HTTP proxies while replicas still drain, so clients of in-flight
requests lose their connection (measured on Ray 2.60). This waits for the work first.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import time

from serve_app.config.app_args import REGISTRY_DEPLOYMENT, TASKS_DEPLOYMENT

logger = logging.getLogger(__name__)



def dreamlab_apps() -> list[str]:
    """Names of the running Serve applications that are Dream Lab apps (they have a registry)."""
    from ray import serve

    return [name for name, app in serve.status().applications.items() if REGISTRY_DEPLOYMENT in app.deployments]


CALL_TIMEOUT_S = 30.0  # one answer of a registry or task store; a hung actor does not hang the drain


def drain(timeout_s: float = 300.0, poll_s: float = 0.2, settle_polls: int = 3) -> dict[str, int]:
    """Set every Dream Lab app draining and wait until no router or replica has work in flight and no
    accepted task or webhook delivery is left (tasks are kept across restarts, but a drain finishes them)."""
    from ray import serve

    apps = dreamlab_apps()
    registries = [serve.get_deployment_handle(REGISTRY_DEPLOYMENT, app) for app in apps]
    stores = [serve.get_deployment_handle(TASKS_DEPLOYMENT, app) for app in apps]
    for answer in [reg.set_draining.remote(True) for reg in registries]:  # every app at once
        answer.result(timeout_s=CALL_TIMEOUT_S)
    time.sleep(3 * poll_s)  # routers poll the flag every 0.2 s
    deadline = time.monotonic() + timeout_s
    quiet = 0
    counts = {"routers": 0, "replicas": 0, "tasks": 0}
    while time.monotonic() < deadline:
        answers = [reg.inflight.remote().result(timeout_s=CALL_TIMEOUT_S) for reg in registries]
        counts = {"routers": sum(a.routers for a in answers), "replicas": sum(a.replicas for a in answers),
                  "tasks": sum(s.unfinished.remote().result(timeout_s=CALL_TIMEOUT_S) for s in stores)}
        quiet = quiet + 1 if not any(counts.values()) else 0
        if quiet >= settle_polls:
            break
        logger.info("draining: %s in flight", counts)
        time.sleep(poll_s)
    else:
        logger.warning("drain timed out after %.0fs with %s in flight", timeout_s, counts)
    time.sleep(1.0)  # let the proxies send the last responses
    return counts


def serve_run_drivers() -> list[int]:
    """Pids of the live `serve run` processes on this host that drive this cluster (Ray's job table, read
    through the public state API)."""
    import ray
    from ray.util.state import list_jobs
    from ray.util.state.exception import RayStateApiException

    host = ray.util.get_node_ip_address()
    try:
        jobs = list_jobs(filters=[("status", "=", "RUNNING")], raise_on_missing_output=False)
    except RayStateApiException as exc:  # a cluster started without its dashboard has no job API
        logger.warning("cannot list this cluster's `serve run` processes (%s); end them by hand", exc)
        return []
    pids = []
    for job in jobs:
        driver = job.driver_info
        if driver is None or driver.node_ip_address != host or not str(driver.pid).isdigit():
            continue
        pid = int(driver.pid)
        if pid != os.getpid() and re.search(r"\bserve\s+run\b", job.entrypoint or ""):
            pids.append(pid)
    return pids


def drain_and_shutdown(address: str = "auto", timeout_s: float = 300.0) -> list[int]:
    """Drain, shut Serve down, then end the `serve run` processes of this cluster on this host (their Ctrl-C,
    which has nothing left to stop; SIGTERM if they ignore it): their pids."""
    import ray
    from ray import serve

    if not ray.is_initialized():
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    drain(timeout_s)
    drivers = serve_run_drivers()
    serve.shutdown()
    for pid in drivers:
        _end(pid)
    return drivers


def _end(pid: int, wait_s: float = 10.0) -> None:
    """Ctrl-C (SIGINT) for `pid`; SIGTERM when it ignores it (a `serve run` started in the background)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
    logger.warning("`serve run` process %d did not exit", pid)
