"""Create a peer pipeline's own environment from the pinned requirements beside this file.

    python benchmarks/peers/setup.py optimum-intel            # or optimum-onnx, or both
    python benchmarks/peers/setup.py optimum-intel --dry-run  # print the commands, create nothing

Each peer gets `<cache>/peer-envs/<peer>`, where <cache> is turbo-runtime's cache folder: $TURBO_RUNTIME_CACHE, else
$XDG_CACHE_HOME/turbo-runtime, else ~/.cache/turbo-runtime. turbo-bench looks there for a peer given no
--peer-python, and runs this to create it on first use. An environment counts as made once its marker file is
written, last, naming the sha256 of the pins it was made from: an interrupted creation, or changed pins, make it
again from scratch.

Only the standard library: this runs with any Python 3.10+ (pip's own configuration, index and find-links apply).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Peer -> (its requirements file, what to install first and alone, what to install without its dependencies, the
# dependencies they declare that are left out on purpose). torch goes first so that pip settles it (the CPU build)
# before resolving the rest. optimum-intel declares torchvision, whose every build here is a CUDA one (torchvision
# 0.29 pulls a CUDA torch 2.14; 0.28 fails to import beside the CPU torch 2.13): it goes in without its
# dependencies, which the requirements file lists, torchvision aside (its Stable Diffusion pipelines do not use it).
# README.md beside this file says more.
PEERS = {
    "optimum-intel": (
        "requirements-optimum-intel.txt",
        ("torch==2.13.0",),
        ("optimum-intel[openvino]==2.2.0",),
        ("torchvision",),
    ),
    "optimum-onnx": ("requirements-optimum-onnx.txt", ("torch==2.13.0",), (), ()),
}
MARKER = "turbo-peer-env.json"
COMMAND = "python benchmarks/peers/setup.py"  # as a user types it from the repository root


class SetupFailed(Exception):
    """A step of the creation failed; the message names it and the command that retries."""


def cache_root() -> Path:
    """turbo-runtime's cache folder (the same rule as turbo_runtime.files.cache_root)."""
    env = os.environ.get("TURBO_RUNTIME_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "turbo-runtime"


def env_dir(peer: str) -> Path:
    return cache_root() / "peer-envs" / peer


def env_python(peer: str) -> Path:
    return env_dir(peer) / "bin" / "python"


def requirements_sha256(peer: str) -> str:
    """Of the pins alone (what is installed first, then the requirement lines): editing a comment keeps an
    environment, changing a pin makes it again."""
    requirements, first, no_deps, _ = PEERS[peer]
    lines = [line.split("#", 1)[0].strip() for line in (HERE / requirements).read_text().splitlines()]
    return hashlib.sha256("\n".join([*first, "--", *filter(None, lines), "--", *no_deps]).encode()).hexdigest()


def ready(peer: str) -> Path | None:
    """The environment's interpreter if it was made completely from the current pins, else None."""
    try:
        marker = json.loads((env_dir(peer) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    python = env_python(peer)
    if marker.get("requirements_sha256") != requirements_sha256(peer) or not python.exists():
        return None
    return python


def command(peer: str) -> str:
    return f"{COMMAND} {peer}"


def steps(peer: str, python: str = sys.executable) -> list[tuple[str, list[str]]]:
    """The steps that create the environment, in order: what each does, and its command."""
    requirements, first, no_deps, _ = PEERS[peer]
    pip = [str(env_python(peer)), "-m", "pip"]
    return [
        ("making the venv", [python, "-m", "venv", str(env_dir(peer))]),
        ("installing torch first", [*pip, "install", *first]),
        ("installing the pinned requirements", [*pip, "install", "-r", str(HERE / requirements)]),
        *([("installing without dependencies", [*pip, "install", "--no-deps", *no_deps])] if no_deps else []),
        ("checking the requirements", [str(env_python(peer)), str(Path(__file__).resolve()), "--check", peer]),
    ]


def plan(peer: str, python: str = sys.executable) -> list[list[str]]:
    """The commands that create the environment, in order."""
    return [command for _, command in steps(peer, python)]


def check(peer: str) -> int:
    """`pip check` in this interpreter's environment, where only the peer's deliberate absences may be missing."""
    absent = PEERS[peer][3]
    done = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    broken = [
        line
        for line in done.stdout.splitlines()
        if line.strip() and not any(line.endswith(f"requires {a}, which is not installed.") for a in absent)
    ]
    if done.returncode != 0 and broken:
        print("\n".join(broken), file=sys.stderr)
        return 1
    print(f"{peer}: requirements consistent" + (f" ({', '.join(absent)} left out on purpose)" if absent else ""))
    return 0


def create(peer: str, python: str = sys.executable, quiet: bool = False, force: bool = False) -> Path:
    """Make the environment (unless it is ready and not `force`d); returns its interpreter. pip's output goes to
    stderr, so a caller's stdout stays its own."""
    folder = env_dir(peer)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{peer}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second creation waits, then finds the first one's environment
        if not force and (done := ready(peer)) is not None:
            return done
        shutil.rmtree(folder, ignore_errors=True)  # incomplete, made from other pins, or forced
        for what, step in steps(peer, python):
            if quiet and step[1:3] == ["-m", "pip"]:
                step = [*step[:4], "-q", *step[4:]]
            print(f"{peer}: {what}: {' '.join(step)}", file=sys.stderr, flush=True)
            code = subprocess.run(step, stdout=sys.stderr, stderr=sys.stderr).returncode
            if code != 0:
                raise SetupFailed(
                    f"creating the {peer} environment failed while {what} (exit {code}; pip's output above); "
                    f"retry with: {command(peer)}"
                )
        marker = {
            "peer": peer,
            "requirements": PEERS[peer][0],
            "requirements_sha256": requirements_sha256(peer),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (folder / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    return env_python(peer)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=COMMAND, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("peers", nargs="+", choices=sorted(PEERS), metavar="PEER", help=" | ".join(sorted(PEERS)))
    p.add_argument("--python", default=sys.executable, help="interpreter the venv is made from (default: this one)")
    p.add_argument("--dry-run", action="store_true", help="print the folder and the commands; create nothing")
    p.add_argument("--force", action="store_true", help="make the environment again even if it is ready")
    p.add_argument("--quiet", action="store_true", help="pip without progress output")
    p.add_argument("--check", action="store_true", help="check the requirements of the environment running this")
    args = p.parse_args(argv)
    if args.check:
        return max(check(peer) for peer in args.peers)
    for peer in args.peers:
        if args.dry_run:
            state = "ready" if ready(peer) else "to be made"
            print(f"{peer}: {env_dir(peer)} ({state})")
            for step in plan(peer, args.python):
                print("  " + " ".join(step))
            continue
        try:
            python = create(peer, args.python, args.quiet, args.force)
        except SetupFailed as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"{peer}: {python}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
