"""turbo-serve: compile once, then answer OpenAI's and AUTOMATIC1111's image APIs and a realtime page over HTTP."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import random
import signal
import socket
import sys
import time
from pathlib import Path

from turbo_runtime.auto import AUTO
from turbo_runtime.cli import add_pipeline_arguments, cli_errors, setup_logging
from turbo_runtime.errors import InputError, MissingDependency, TurboError

log = logging.getLogger("turbo-serve")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="turbo-serve", description=__doc__)
    add_pipeline_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument(
        "--api-key",
        default=os.environ.get("TURBO_API_KEY"),
        help="require 'Authorization: Bearer KEY' on every API and WebSocket call (default: $TURBO_API_KEY)",
    )
    p.add_argument("--max-queue", type=int, default=16, help="requests waiting beyond which 503 is answered")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds a request may take, queue included")
    p.add_argument("--max-steps", type=int, default=50, help="most denoising steps per request (default 50)")
    p.add_argument("--max-images", type=int, default=4, help="most images per request (default 4)")
    p.add_argument("--max-body-mb", type=float, default=16.0, help="largest request body or message (default 16)")
    p.add_argument(
        "--cors-origin", action="append", default=[], help="allow browser calls from this origin (repeatable)"
    )
    p.add_argument("--name", help="the model name clients see (default: the artifacts' model id)")
    ray = p.add_argument_group('Ray Serve (pip install "turbo-runtime[ray]")')
    ray.add_argument("--ray", action="store_true", help="serve from Ray Serve replicas, one pipeline each")
    ray.add_argument("--replicas", type=int, help="replicas (default 1)")
    ray.add_argument("--min-replicas", type=int, help="autoscale by ongoing requests between this and --max-replicas")
    ray.add_argument("--max-replicas", type=int, help="the most replicas autoscaling starts")
    ray.add_argument("--replica-cpus", type=float, help="CPUs each replica reserves (default 1; pair with --threads)")
    ray.add_argument("--replica-gpus", type=float, help="GPUs each replica reserves (default 0)")
    ray.add_argument(
        "--ray-address", help="join this Ray cluster (ray start --head prints it); default: start a local one"
    )
    p.add_argument("--verbose", action="store_true", help="log every request")
    p.add_argument("--quiet", action="store_true", help="errors only")
    return p


def _listen(host: str, port: int) -> socket.socket:
    """Bind before loading, so a taken port fails at once, and --port 0 knows its port for the ready line."""
    if not 0 <= port <= 65535:
        raise InputError(f"--port must be from 0 to 65535, got {port}")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        raise InputError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def _port_outside_ephemeral(host: str) -> int:
    """A free port for Ray Serve's proxy, which binds it only once Ray runs: one outside the kernel's ephemeral
    range, from which Ray's own processes draw the ports they bind meanwhile, and above Ray's worker ports
    (10002-19999). A port the OS picked (--port 0 as usual) could be taken by one of them before the proxy binds."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    candidates = list(range(20000, low)) or list(range(low, 65536))
    random.shuffle(candidates)
    for port in candidates[:200]:
        try:
            with _listen(host, port):
                return port
        except InputError:
            continue
    raise InputError(f"no free port found on {host} for Ray Serve's proxy; pass --port")


def draining_server(uvicorn, config, service, drain_seconds: float):
    """uvicorn's server, with a drain first: on SIGTERM or Ctrl-C, /ready and new requests answer 503 while the
    queued and running requests finish (for at most `drain_seconds`), then uvicorn shuts down as usual. A second
    signal stops at once."""

    class DrainingServer(uvicorn.Server):
        deadline = None

        def handle_exit(self, sig, frame) -> None:
            if self.deadline is None:
                self.deadline = time.monotonic() + drain_seconds
                service.draining = True
            else:
                super().handle_exit(sig, frame)

        async def on_tick(self, counter: int) -> bool:
            if self.deadline is not None and (service.worker.idle or time.monotonic() > self.deadline):
                self.should_exit = True
            return await super().on_tick(counter)

    return DrainingServer(config)


def _url(host: str, port: int) -> str:
    try:
        host = f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        pass
    return f"http://{host}:{port}"


@cli_errors
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    try:
        import uvicorn

        from turbo_runtime.serve.app import create_app
    except ImportError:
        raise MissingDependency('turbo-serve needs FastAPI and uvicorn: pip install "turbo-runtime[serve]"') from None
    from turbo_runtime.serve.config import PipelineSource, ServeSettings

    if args.artifacts and (args.vae or args.height or args.width or args.precision != AUTO):
        raise InputError("--precision, --vae, --height and --width are export options, for --model")
    settings = ServeSettings(
        api_key=args.api_key or None,
        max_queue=args.max_queue,
        timeout=args.timeout,
        max_body_bytes=int(args.max_body_mb * (1 << 20)),
        max_steps=args.max_steps,
        max_images=args.max_images,
        cors_origins=tuple(args.cors_origin),
        model_name=args.name,
    )
    source = PipelineSource(
        artifacts=args.artifacts,
        model=args.model,
        backend=args.backend,
        device=args.device,
        dtype=args.dtype,
        threads=args.threads,
        precision=args.precision,
        vae=args.vae,
        height=args.height,
        width=args.width,
        quiet=args.quiet,
    )
    if args.ray:
        return _serve_on_ray(args, source, settings)
    ray_flags = ("replicas", "min_replicas", "max_replicas", "replica_cpus", "replica_gpus", "ray_address")
    if any(getattr(args, name) is not None for name in ray_flags):
        raise InputError("--replicas, --min-replicas, --max-replicas, --replica-* and --ray-address need --ray")
    source.check()
    sock = _listen(args.host, args.port)
    url = _url(args.host, sock.getsockname()[1])
    failed: list[Exception] = []

    def on_ready(pipe, seconds: float) -> None:
        b, choice = pipe.backend, pipe.choice
        what = f"{settings.model_name or pipe.artifacts.model_id} on {b.name} {b.device} {b.inference_precision}"
        where = f"{pipe.width}x{pipe.height}, cpu class {choice.cpu.name}"
        print(f"ready: {url}/ ({what}, {where}; loaded in {seconds:.1f} s)", flush=True)
        log.info("cpu class: %s; %s", choice.cpu, choice)

    def on_failed(error: Exception) -> None:
        failed.append(error)
        server.should_exit = True

    app = create_app(source, settings, on_ready, on_failed)
    config = uvicorn.Config(
        app,
        log_level="info" if args.verbose else "warning",
        access_log=args.verbose,
        ws_max_size=settings.max_body_bytes,
        timeout_graceful_shutdown=int(settings.timeout),
    )
    server = draining_server(uvicorn, config, app.state.service, settings.timeout)
    if not args.quiet:
        print(f"turbo-serve: listening on {url}; loading {args.artifacts or args.model} on {args.backend}", flush=True)
    if settings.api_key is None and not ipaddress.ip_address(sock.getsockname()[0]).is_loopback:
        log.warning("listening beyond this machine without an API key: anyone who reaches %s can generate", url)
    # After a second signal uvicorn raises it again with the handler it found: a no-op one makes a SIGTERM
    # shutdown exit 0, as service managers expect.
    signal.signal(signal.SIGTERM, lambda *_: None)
    server.run(sockets=[sock])
    if not failed and not app.state.service.worker.ready:
        # Stopped while compiling: an engine cannot be interrupted, and unwinding the interpreter under it can
        # abort the process; nothing is half-written (exports are renamed into place when complete).
        sys.stdout.flush()
        os._exit(0)
    if failed:
        error = failed[0]
        if isinstance(error, TurboError):
            raise error
        print(f"error: loading the pipeline failed: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    return 0


def _serve_on_ray(args: argparse.Namespace, source, settings) -> int:
    """The same app on Ray Serve replicas, until SIGTERM or Ctrl-C; a local cluster goes with the server."""
    import dataclasses
    import threading

    from turbo_runtime.serve import ray_app

    if args.artifacts is None:
        raise InputError("--ray serves exported artifacts: give --artifacts, a folder every node can read")
    options = ray_app.RayOptions(
        replicas=1 if args.replicas is None else args.replicas,
        min_replicas=args.min_replicas,
        max_replicas=args.max_replicas,
        replica_cpus=1.0 if args.replica_cpus is None else args.replica_cpus,
        replica_gpus=0.0 if args.replica_gpus is None else args.replica_gpus,
        address=args.ray_address,
    )
    if options.autoscaling and args.replicas is not None:
        raise InputError("give --replicas, or --min-replicas and --max-replicas, not both")
    # Replicas may run on other machines, in other folders: they get the absolute path.
    source = dataclasses.replace(source, artifacts=args.artifacts.expanduser().resolve())
    if options.address is None:
        source.check()  # this machine runs every replica: fail before starting Ray
        if args.port:
            with _listen(args.host, args.port):  # a taken port fails now, before Ray starts
                pass
        port = args.port or _port_outside_ephemeral(args.host)
    elif not 1 <= args.port <= 65535:  # every node's proxy listens on it: a free port here proves nothing there
        raise InputError(f"--port must be from 1 to 65535 with --ray-address, got {args.port}")
    else:
        port = args.port
    url = _url(args.host, port)
    stop = threading.Event()
    with ray_app.cluster(options, verbose=args.verbose):
        if not args.quiet:
            where = f"the Ray cluster at {options.address}" if options.address else "a local Ray cluster"
            count = (
                f"{options.min_replicas} to {options.max_replicas}" if options.autoscaling else str(options.replicas)
            )
            print(
                f"turbo-serve: listening on {url}; loading {args.artifacts} on {args.backend} in {count} "
                f"replicas on {where}",
                flush=True,
            )
        start = time.monotonic()
        info = ray_app.deploy(source, settings, options, args.host, port, verbose=args.verbose)
        what = f"{info['model']} on {info['backend']} {info['device']} {info['precision']}"
        seconds = time.monotonic() - start
        print(
            f"ready: {url}/ ({what}, {info['width']}x{info['height']}; replicas ready in {seconds:.1f} s)", flush=True
        )
        if settings.api_key is None and not ipaddress.ip_address(socket.gethostbyname(args.host)).is_loopback:
            log.warning("listening beyond this machine without an API key: anyone who reaches %s can generate", url)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        while not stop.wait(1):  # wakes for signals on every platform
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
