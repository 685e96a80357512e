"""Ray Serve: the app create_app builds, mounted with @serve.ingress, one TurboPipeline per replica, on one machine or
a cluster of them. The only module that imports ray (lazily: a local cluster must choose its address first).

Each replica verifies its artifacts' hashes against the manifest, compiles, and makes one warm-up image before Ray
Serve routes a request to it, so a replica with a damaged copy fails to start, naming the file. Ray Serve's health
checks call Service.check_health (a cheap self-test), and a replica that fails it is replaced.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

from turbo_runtime import errors
from turbo_runtime.errors import ClusterError, InputError, MissingDependency, TurboError
from turbo_runtime.pipeline import TurboPipeline
from turbo_runtime.serve.app import create_app
from turbo_runtime.serve.config import PipelineSource, ServeSettings

log = logging.getLogger("turbo_runtime.serve")
APP = "turbo"  # the Ray Serve application's name
DEPLOYMENT = "turbo"
TARGET_ONGOING = 2  # autoscaling's aim per replica: one request generating and one waiting, so none idles
# Ray picks the node's address even for a cluster of one; this makes a local cluster bind to the loopback only.
# Read when ray is imported, in this process and the ones it starts.
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@dataclass(frozen=True)
class RayOptions:
    """How many replicas, what each reserves, and which cluster (None: a local one, started and stopped here)."""

    replicas: int = 1
    min_replicas: int | None = None  # with max_replicas: autoscaling by ongoing requests per replica
    max_replicas: int | None = None
    replica_cpus: float = 1.0
    replica_gpus: float = 0.0
    address: str | None = None
    num_cpus: int | None = None  # a local cluster's CPUs (default: the machine's)

    def __post_init__(self):
        if self.replicas < 1:
            raise InputError(f"--replicas must be at least 1, got {self.replicas}")
        if (self.min_replicas is None) != (self.max_replicas is None):
            raise InputError("give --min-replicas and --max-replicas together (autoscaling), or --replicas")
        if self.autoscaling and not (0 <= self.min_replicas <= self.max_replicas and self.max_replicas >= 1):
            raise InputError(
                f"--min-replicas must be from 0 to --max-replicas, and --max-replicas at least 1; got "
                f"{self.min_replicas} and {self.max_replicas}"
            )
        if self.replica_cpus < 0 or self.replica_gpus < 0:
            raise InputError("--replica-cpus and --replica-gpus cannot be negative")

    @property
    def autoscaling(self) -> bool:
        return self.max_replicas is not None

    def deployment_options(self, settings: ServeSettings) -> dict:
        """Ray Serve's options for the deployment (see ray.serve.deployment)."""
        options = dict(
            ray_actor_options={"num_cpus": self.replica_cpus, "num_gpus": self.replica_gpus},
            # A replica takes as many requests as its worker holds (one running, max_queue waiting); Ray's proxies
            # hold max_queue more, then answer 503, as one turbo-serve does when its queue is full.
            max_ongoing_requests=settings.max_queue + 1,
            max_queued_requests=settings.max_queue,
            graceful_shutdown_timeout_s=settings.timeout,
            # A replica that fails to start does so for a reason that a retry on the same copy keeps (a damaged
            # artifact, a missing package): one try per replica, not Ray's default of 20.
            max_constructor_retry_count=self.max_replicas or self.replicas,
        )
        if self.autoscaling:
            options["autoscaling_config"] = {
                "min_replicas": self.min_replicas,
                "max_replicas": self.max_replicas,
                "initial_replicas": max(1, self.min_replicas),
                "target_ongoing_requests": TARGET_ONGOING,
            }
        else:
            options["num_replicas"] = self.replicas
        return options


class TurboReplica:
    """One replica: its own pipeline (artifacts verified, compiled, one warm-up image) behind create_app's app."""

    async def __init__(self, source: PipelineSource, settings: ServeSettings):
        from ray import serve

        replica = serve.get_replica_context().replica_tag
        pipeline = await asyncio.to_thread(_load, source)
        self._turbo_app = create_app(lambda: pipeline, replace(settings, replica=replica))
        self._service = self._turbo_app.state.service
        self._service.metrics.appended.append(_node_metrics())

    def __serve_build_asgi_app__(self):
        return self._turbo_app

    async def check_health(self) -> None:
        """Ray Serve calls this every few seconds; an exception makes it replace the replica."""
        await self._service.check_health()

    def info(self) -> dict:
        return self._service.info()


def _load(source: PipelineSource) -> TurboPipeline:
    pipeline = source()  # verifies every file against the manifest's sha256 before compiling
    pipeline("", seed=0, output_type="np")  # the whole pipeline once: a replica that cannot generate never serves
    return pipeline


def _node_metrics() -> Callable[[], bytes]:
    """A reader of Ray Serve's metrics (ray_serve_*) from the Prometheus endpoint of this replica's node."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    node = next(n for n in ray.nodes() if n["NodeID"] == node_id)
    url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"

    def read() -> bytes:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                text = response.read()
        except OSError as e:
            return f"# Ray Serve's metrics could not be read from {url}: {e}\n".encode()
        keep = (b"ray_serve_", b"# HELP ray_serve_", b"# TYPE ray_serve_")  # the node's other Ray metrics: 0.5 MB
        return b"".join(line for line in text.splitlines(keepends=True) if line.startswith(keep))

    return read


def _ray():
    try:
        import ray
        from ray import serve
    except ImportError:
        raise MissingDependency('--ray needs Ray Serve: pip install "turbo-runtime[ray]"') from None
    return ray, serve


@contextmanager
def cluster(options: RayOptions, verbose: bool = False) -> Iterator[None]:
    """Start a local Ray cluster (options.address None) or join one; leave it as found on the way out: a local
    one is shut down with all its processes, a joined one loses only this application."""
    if options.address is None:
        os.environ.setdefault(LOOPBACK_ENV, "0")
    ray, serve = _ray()
    level = logging.INFO if verbose else logging.WARNING
    logging.getLogger("ray.serve").setLevel(level)  # the driver's side of Ray Serve: a line per step otherwise
    try:
        if options.address is None:
            ray.init(
                address="local",  # a new cluster, never one that happens to run on this machine
                num_cpus=options.num_cpus,
                include_dashboard=False,
                log_to_driver=verbose,
                logging_level=level,
            )
        else:
            ray.init(address=options.address, log_to_driver=verbose, logging_level=level)
    except (ConnectionError, ValueError, RuntimeError) as e:
        ray.shutdown()
        where = options.address or "a local cluster"
        raise ClusterError(f"cannot start or join Ray at {where}: {_last_line(str(e))}") from None
    try:
        yield
    finally:
        try:
            if options.address is None:
                serve.shutdown()
            elif serve.status().applications.get(APP) is not None:
                serve.delete(APP)
        except Exception as e:  # a cluster gone already: disconnect all the same
            log.warning("Ray Serve did not shut down cleanly: %s", _last_line(str(e)))
        finally:
            ray.shutdown()


def deploy(
    source: PipelineSource,
    settings: ServeSettings,
    options: RayOptions,
    host: str = "127.0.0.1",
    port: int = 8000,
    name: str = APP,
    route_prefix: str = "/",
    verbose: bool = False,
) -> dict:
    """Run the deployment (in the cluster `cluster` connected to) and wait until every replica is healthy.

    Returns one replica's Service.info(). A replica that fails to start raises its own error (an ArtifactError
    naming the damaged file) and the application is removed.
    """
    ray, serve = _ray()
    quiet = {"log_level": "INFO" if verbose else "WARNING"}
    serve.start(http_options={"host": host, "port": port}, logging_config=quiet)
    deployment = serve.deployment(serve.ingress()(TurboReplica)).options(
        name=DEPLOYMENT, **options.deployment_options(settings)
    )
    try:
        handle = serve.run(
            deployment.bind(source, settings), name=name, route_prefix=route_prefix, logging_config=quiet
        )
    except RuntimeError as e:
        # The application's message only says that a deployment failed; the deployment's holds the traceback.
        app = serve.status().applications.get(name)
        status = app.deployments.get(DEPLOYMENT) if app else None
        serve.delete(name)
        raise replica_error(status.message if status and status.message else str(e)) from None
    return handle.info.remote().result()


def replica_error(text: str) -> TurboError:
    """The project error a replica raised, found in the traceback Ray Serve reports, or a ClusterError."""
    for line in reversed(text.splitlines()):
        match = re.match(r"\s*(?:turbo_runtime\.errors\.)?(\w+): (.+)", line)
        kind = getattr(errors, match.group(1), None) if match else None
        if isinstance(kind, type) and issubclass(kind, TurboError):
            return kind(f"a replica failed to start: {match.group(2)}")
    return ClusterError(f"Ray Serve could not start the replicas: {_last_line(text)}")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no reason given"
