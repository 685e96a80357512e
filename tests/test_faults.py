"""Faults: exports killed midway, hand-edited manifests, modified artifact files."""

from __future__ import annotations

import json
import os
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error, flip_middle_byte, run_cli

from turbo_runtime.artifacts import Artifacts
from turbo_runtime.errors import ArtifactError

# A re-export that cannot reuse the session's 128x128 artifacts: another shape, one format (about 15 s here).
REEXPORT = ("--format", "onnx", "--height", "64", "--width", "64", "--quiet")


def linked_copy(src: Path, dst: Path) -> Path:
    """A copy of an artifacts folder whose files are hard links, but for its own manifest (cheap; do not edit the
    other files in place)."""
    shutil.copytree(src, dst, copy_function=os.link)
    manifest = dst / "manifest.json"
    manifest.unlink()
    shutil.copy(src / "manifest.json", manifest)
    return dst


def run_artifacts(art: Path, out: Path, backend: str = "openvino"):
    return run_cli("turbo-run", "--artifacts", str(art), "--backend", backend, "--prompt", "x", "--out", str(out))


# ---- turbo-export killed: the target holds the old or the new artifacts, never a part; the next export works ----


def start_export(out: Path, *wrapper: str) -> subprocess.Popen:
    exe = Path(sys.executable).parent / "turbo-export"
    args = [*wrapper, str(exe), "tiny-sd-turbo", "--out", str(out), *REEXPORT]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def kill_when(proc: subprocess.Popen, out: Path, rel: str, delay: float) -> bool:
    """SIGKILL `proc` `delay` seconds after its temporary folder holds `rel` ("": once the folder exists).

    Returns whether it was killed (False: it had finished). Folders left by earlier runs do not count."""
    stale = set(out.parent.glob(f".{out.name}.tmp-*"))
    deadline = time.monotonic() + 120
    while not any((d / rel).exists() for d in out.parent.glob(f".{out.name}.tmp-*") if d not in stale):
        if proc.poll() is not None:
            return False
        assert time.monotonic() < deadline, f"the export did not reach {rel!r} in 120 s"
        time.sleep(0.005)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    return proc.wait(timeout=60) == -signal.SIGKILL


def assert_old_or_new(out: Path) -> str:
    """The session's artifacts (openvino and onnx at 128x128) or the re-export's (onnx at 64x64), intact."""
    art = Artifacts.load(out)
    state = "old" if art.height == 128 else "new"
    assert (art.height, art.manifest["formats"]) in ((128, ["onnx", "openvino"]), (64, ["onnx"]))
    for fmt in art.manifest["formats"]:
        art.verify(fmt)
    return state


def test_a_killed_export_leaves_nothing_half_written_and_the_next_one_succeeds(tmp_path, sd_artifacts):
    out = tmp_path / "art"
    # Into a new folder: killed as the temporary folder appears, during the imports, once the tokenizer is saved.
    for rel, delay in (("", 0.0), ("", 2.0), ("tokenizer/tokenizer.json", 0.0)):
        assert kill_when(start_export(out), out, rel, delay), rel
        assert not out.exists(), rel
        with pytest.raises(ArtifactError, match="does not exist"):
            Artifacts.load(out)
    # Over good artifacts: as the UNet's graph is written, as the VAE encoder's is (the decoder's comes next), and
    # 1.5 s after the tokenizer (wherever that falls: on a quiet machine the export may be done by then).
    linked_copy(sd_artifacts, out)
    for rel in ("onnx/unet/model.onnx", "onnx/vae_encoder/model.onnx"):
        assert kill_when(start_export(out), out, rel, 0.0), rel
        assert assert_old_or_new(out) == "old", rel
    kill_when(start_export(out), out, "tokenizer/tokenizer.json", 1.5)
    assert_old_or_new(out)
    result = run_cli("turbo-export", "tiny-sd-turbo", "--out", str(out), *REEXPORT)
    assert result.returncode == 0, result.stderr
    assert assert_old_or_new(out) == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".art.lock", "art"]  # nothing stale left beside it
    # What a kill leaves while the swapped-out old artifacts are removed is removed by an export that reuses.
    shutil.copytree(out, tmp_path / ".art.tmp-killed")
    (tmp_path / ".art.old-killed").mkdir()
    result = run_cli("turbo-export", "tiny-sd-turbo", "--out", str(out), *REEXPORT)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [".art.lock", "art"]


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace to stop the export at its swap")
def test_an_export_killed_at_the_swap_leaves_the_old_artifacts(tmp_path, sd_artifacts):
    """SIGKILL as the export calls renameat2 to swap the new folder into place, over good artifacts (strace injects
    it at the first renameat2 call, which is the swap: os.rename and os.replace call rename on x86-64)."""
    out = linked_copy(sd_artifacts, tmp_path / "art")
    proc = start_export(out, "strace", "-qq", "-o", os.devnull, "-e", "trace=renameat2",
                        "-e", "inject=renameat2:signal=KILL")  # fmt: skip
    assert proc.wait(timeout=300) == -signal.SIGKILL  # strace ends as its child did
    assert assert_old_or_new(out) == "old"
    result = run_artifacts(out, tmp_path / "x.png")
    assert result.returncode == 0, result.stderr


# ---- no room while exporting: one line, exit 2, nothing installed and nothing left for the next export ----

SMALL_OPENVINO = ("--format", "openvino", "--height", "64", "--width", "64", "--quiet")


def _tmpfs_mountable() -> bool:
    """Whether a tmpfs can be mounted in a mount namespace of our own (as root, or through a user namespace)."""
    if shutil.which("unshare") is None:
        return False
    probe = ["unshare", "--map-root-user", "--mount", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /tmp"]
    return subprocess.run(probe, capture_output=True).returncode == 0


@pytest.mark.skipif(not _tmpfs_mountable(), reason="cannot mount a tmpfs in a mount namespace here")
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])  # what "auto" picks differs between CPUs
def test_a_full_disk_during_export_gives_one_line_and_installs_nothing(tmp_path, precision):
    """turbo-export onto a 3 MiB tmpfs: OpenVINO cannot write the UNet's weights (with fp16 it removes its partial
    files, so the disk looks roomy afterwards); then, with room, an export succeeds. The tmpfs lives in a mount
    namespace of the test's own, so nothing stays mounted whatever happens."""
    from export.replicas import replica_path

    replica_path("tiny-sd-turbo")  # built in the cache (on another disk) beforehand
    disk, logs = tmp_path / "disk", tmp_path / "logs"
    disk.mkdir()
    logs.mkdir()
    export = [str(Path(sys.executable).parent / "turbo-export"), "tiny-sd-turbo", "--out", str(disk / "art")]
    verify = [sys.executable, "-c", f"from turbo_runtime.artifacts import Artifacts; "
              f"Artifacts.load({str(disk / 'art')!r}).verify('onnx')"]  # fmt: skip
    script = f"""
        mount -t tmpfs -o size=3m tmpfs {disk} || exit 99
        {shlex.join([*export, *SMALL_OPENVINO, "--precision", precision])} 2>{logs}/full.err; echo $? >{logs}/full.rc
        ls -A {disk} >{logs}/full.ls
        mount -o remount,size=64m {disk} || exit 99
        {shlex.join([*export, *REEXPORT])} >/dev/null 2>{logs}/room.err; echo $? >{logs}/room.rc
        ls -A {disk} >{logs}/room.ls
        {shlex.join(verify)}
    """
    done = subprocess.run(["unshare", "--map-root-user", "--mount", "sh", "-c", script], capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    log = {f.name: f.read_text() for f in logs.iterdir()}
    full = subprocess.CompletedProcess([], int(log["full.rc"]), "", log["full.err"])
    assert_one_line_error(full, f"cannot write the artifacts for {disk / 'art'}: No space left on device",
                          "nothing was installed")  # fmt: skip
    assert log["full.ls"].split() == [".art.lock"]  # no partial folder, no temporary one
    assert log["room.rc"].strip() == "0", log["room.err"]  # the next export, with room, succeeds
    assert log["room.ls"].split() == [".art.lock", "art"]
    assert done.returncode == 0, done.stderr  # and its artifacts verify


def test_a_file_size_limit_during_export_gives_one_line_and_installs_nothing(tmp_path):
    """RLIMIT_FSIZE at 2 MiB: writing the UNet's ONNX graph fails with EFBIG (Python ignores SIGXFSZ, so the
    write fails instead of the signal killing the process)."""
    from export.replicas import replica_path

    replica_path("tiny-sd-turbo")  # built in the cache beforehand, without the limit
    out = tmp_path / "art"
    limit = 2 << 20
    result = subprocess.run(
        [str(Path(sys.executable).parent / "turbo-export"), "tiny-sd-turbo", "--out", str(out), *REEXPORT],
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)),
    )
    assert_one_line_error(result, f"cannot write the artifacts for {out}: File too large", "file size limit 2.0 MiB",
                          "nothing was installed")  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == [".art.lock"]


# ---- hand-edited manifests: refused with one line naming the problem; nothing outside the folder is opened ----


def _outside(art: Path, rel: str) -> Path:
    """A copy of the artifact file or folder `rel` beside (outside) the artifacts folder."""
    target = art.parent / "outside" / Path(rel).name
    target.parent.mkdir(exist_ok=True)
    shutil.copytree(art / rel, target) if (art / rel).is_dir() else shutil.copy(art / rel, target)
    return target


def _symlink_out(art: Path, rel: str) -> None:
    """Replace `rel` by a symbolic link to an identical copy outside the folder."""
    target = _outside(art, rel)
    shutil.rmtree(art / rel) if (art / rel).is_dir() else (art / rel).unlink()
    (art / rel).symlink_to(target)


def _in_place(change: Callable[[Path, dict], object]) -> Callable[[Path, dict], object]:
    """An edit that changes the manifest's dict (and maybe the folder), then writes it back."""

    def edit(art: Path, m: dict) -> dict:
        change(art, m)
        return m

    return edit


def _unet_weights_named(rel_of: Callable[[Path], str]) -> Callable[[Path, dict], object]:
    """The UNet's OpenVINO weights named by another path, to a copy listed with its true sha256: only the path is
    wrong."""

    def change(art: Path, m: dict) -> None:
        _outside(art, "openvino/unet.bin")
        rel = rel_of(art)
        m["components"]["unet"]["files"]["openvino"][1] = rel
        m["files"][rel] = m["files"]["openvino/unet.bin"]

    return _in_place(change)


# Each edit returns what to write as manifest.json (None: it replaced the file itself).
MANIFEST_EDITS: dict[str, tuple[Callable[[Path, dict], object], list[str]]] = {
    "dot-dot path": (
        _unet_weights_named(lambda art: "../outside/unet.bin"),
        ["names '../outside/unet.bin', which is not a path inside"],
    ),
    "absolute path": (
        _unet_weights_named(lambda art: str(art.parent / "outside" / "unet.bin")),
        ["outside/unet.bin', which is not a path inside"],
    ),
    "symlinked component file": (
        _in_place(lambda art, m: _symlink_out(art, "openvino/unet.bin")),
        ["openvino/unet.bin leads outside the artifacts folder", "outside/unet.bin"],
    ),
    "symlinked tokenizer folder": (
        _in_place(lambda art, m: _symlink_out(art, "tokenizer")),
        ["tokenizer/tokenizer.json leads outside the artifacts folder"],
    ),
    "symlinked manifest": (
        lambda art, m: _symlink_out(art, "manifest.json"),
        ["manifest.json leads outside the artifacts folder"],
    ),
    "a number for a path list": (
        _in_place(lambda art, m: m["components"]["unet"]["files"].update(openvino=5)),
        ["components.unet.files.openvino must be a list, got 5"],
    ),
    "a string for a path list": (
        _in_place(lambda art, m: m["components"]["unet"]["files"].update(openvino="openvino/unet.xml")),
        ['components.unet.files.openvino must be a list, got "openvino/unet.xml"'],
    ),
    "a format without files": (
        _in_place(lambda art, m: m["components"]["vae_decoder"]["files"].pop("openvino")),
        ["components.vae_decoder.files.openvino is missing"],
    ),
    "missing family": (_in_place(lambda art, m: m.pop("family")), ["family is missing"]),
    "unknown family": (_in_place(lambda art, m: m.update(family="sd9")), ["family 'sd9' is not a model family"]),
    "missing component": (_in_place(lambda art, m: m["components"].pop("unet")), ["components.unet is missing"]),
    "string height": (_in_place(lambda art, m: m.update(height="128")), ['height must be an integer, got "128"']),
    "a list for the file hashes": (
        _in_place(lambda art, m: m.update(files=sorted(m["files"]))),
        ["files must be an object"],
    ),
    "a shape as text": (
        _in_place(lambda art, m: m["components"]["unet"]["inputs"][0].update(shape="1x4x16x16")),
        ['components.unet.inputs[0].shape must be a list, got "1x4x16x16"'],
    ),
    "a list for the manifest": (lambda art, m: [m], ["the manifest must be an object"]),
}


@pytest.mark.parametrize("case", MANIFEST_EDITS)
def test_hand_edited_manifest_is_refused(tmp_path, sd_artifacts, case):
    edit, fragments = MANIFEST_EDITS[case]
    art = linked_copy(sd_artifacts, tmp_path / "art")
    written = edit(art, json.loads((art / "manifest.json").read_text()))
    if written is not None:
        (art / "manifest.json").write_text(json.dumps(written))
    for backend in ("openvino", "onnxruntime"):
        result = run_artifacts(art, tmp_path / "x.png", backend)
        assert_one_line_error(result, *fragments)
        assert not (tmp_path / "x.png").exists()


# ---- artifact files truncated or changed on disk: refused before anything is loaded ----


def _own_copy(path: Path) -> None:
    """Break a hard link, so that editing `path` leaves the original alone."""
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(data)


@pytest.mark.parametrize(
    "rel,backend",
    [
        ("tokenizer/tokenizer.json", "openvino"),
        ("onnx/unet/model.onnx", "onnxruntime"),
        ("openvino/unet.bin", "openvino"),
    ],
)
@pytest.mark.parametrize("change", ["truncated", "a flipped byte", "a flipped byte, modification time kept"])
def test_a_modified_artifact_file_is_refused(tmp_path, sd_artifacts, rel, backend, change):
    art = linked_copy(sd_artifacts, tmp_path / "art")
    _own_copy(art / rel)
    Artifacts.load(art).verify({"openvino": "openvino", "onnxruntime": "onnx"}[backend])  # its digest remembered
    stat = (art / rel).stat()
    if change == "truncated":
        os.truncate(art / rel, stat.st_size // 2)
    else:
        flip_middle_byte(art / rel)
    if change.endswith("kept"):  # as a copy that preserves times would leave it
        os.utime(art / rel, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    result = run_artifacts(art, tmp_path / "x.png", backend)
    assert_one_line_error(result, f"{rel} was modified", "export again")
    assert not (tmp_path / "x.png").exists()


# ---- the OpenVINO compile cache: an entry changed on disk is compiled again, never used ----


def test_a_modified_compile_cache_entry_is_compiled_again(tmp_path, sd_artifacts):
    """OpenVINO itself compiles again over a truncated blob but computes with one whose byte was flipped; the
    backend checks every entry against the sha256 it recorded when the entry was written."""
    import numpy as np
    from PIL import Image

    from turbo_runtime.files import sha256_file

    env = {"TURBO_RUNTIME_CACHE": str(tmp_path / "cache")}  # compiled afresh, recorded by this test's runs
    args = ["turbo-run", "--artifacts", str(sd_artifacts), "--backend", "openvino", "--prompt", "a fox", "--seed", "1"]
    init = run_cli(*args, "--out", str(tmp_path / "init.png"), env=env)
    assert init.returncode == 0, init.stderr

    def blobs() -> dict[str, Path]:
        return {b.parent.name.rsplit("-", 1)[0]: b for b in (tmp_path / "cache" / "openvino-cache").glob("*/*.blob")}

    assert sorted(blobs()) == ["text_encoder", "unet", "vae_decoder"]  # text-to-image loads no VAE encoder
    args += ["--image", str(tmp_path / "init.png")]
    first = run_cli(*args, "--out", str(tmp_path / "first.png"), env=env)
    assert first.returncode == 0, first.stderr
    blobs = blobs()
    assert sorted(blobs) == ["text_encoder", "unet", "vae_decoder", "vae_encoder"]
    for blob in blobs.values():
        assert blob.with_name(blob.name + ".sha256").read_text().strip() == sha256_file(blob)
        blob.chmod(0o644)  # OpenVINO writes them read-only
    blobs["text_encoder"].with_name(blobs["text_encoder"].name + ".sha256").unlink()  # as if its writer died
    os.truncate(blobs["unet"], blobs["unet"].stat().st_size // 2)
    flip_middle_byte(blobs["vae_encoder"])
    flip_middle_byte(blobs["vae_decoder"])
    written = {name: blob.stat().st_mtime_ns for name, blob in blobs.items()}
    second = run_cli(*args, "--out", str(tmp_path / "second.png"), env=env)
    assert second.returncode == 0, second.stderr
    assert second.stderr.count("was modified since it was written; compiling again") == 3, second.stderr
    for name, blob in blobs.items():  # written again, and recorded
        assert blob.stat().st_mtime_ns != written[name], name
        assert blob.with_name(blob.name + ".sha256").read_text().strip() == sha256_file(blob), name
    images = [np.asarray(Image.open(tmp_path / f"{run}.png")) for run in ("first", "second")]
    assert np.array_equal(*images)


# ---- ONNX Runtime's saved optimized graphs: written once, reused, rebuilt when changed, never used when foreign ----


def _ort_image(artifacts: Path, cache: Path):
    from turbo_runtime.pipeline import TurboPipeline

    pipe = TurboPipeline.from_artifacts(artifacts, "onnxruntime", threads=1, cache_dir=cache)
    return pipe("a fox", seed=1, output_type="np").images


def _ort_entries(cache: Path) -> dict[str, Path]:
    """Component -> its folder of saved graphs in `cache`."""
    return {folder.name.rsplit("-", 1)[0]: folder for folder in cache.iterdir() if folder.is_dir()}


def test_onnxruntime_saves_its_optimized_graphs_once_and_loads_them_after(tmp_path, sd_artifacts, monkeypatch):
    import onnxruntime as ort

    from turbo_runtime.backends import onnxruntime_backend as backend
    from turbo_runtime.files import sha256_file

    cache = tmp_path / "cache"
    first = _ort_image(sd_artifacts, cache)
    folders = _ort_entries(cache)
    assert sorted(folders) == ["text_encoder", "unet", "vae_decoder", "vae_encoder"]
    for folder in folders.values():
        record = json.loads((folder / "optimized.json").read_text())
        assert record["onnxruntime"] == ort.__version__ and record["files"]
        for name in [*record["files"], "optimized.json"]:  # each entry's sha256 recorded, checked at every start
            assert (folder / f"{name}.sha256").read_text().strip() == sha256_file(folder / name)
        assert not [p for p in folder.iterdir() if p.name.startswith(".build-")]
    written = {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file() and p.name != ".lock"}

    def no_optimizing(*args, **kwargs):
        raise AssertionError("the graph was optimized again")

    monkeypatch.setattr(backend.OnnxRuntimeBackend, "_save_optimized", no_optimizing)
    second = _ort_image(sd_artifacts, cache)
    assert {p: p.stat().st_mtime_ns for p in written} == written
    assert np.array_equal(first, second)

    # the same image as sessions made from the exported graphs themselves, every optimization applied at load
    def from_source(self, component, cache_dir, recorder):
        so = backend._session_options(ort.GraphOptimizationLevel.ORT_ENABLE_ALL, 1)
        if component in backend._NO_PREPACKING:  # pre-packed products round differently
            so.add_session_config_entry("session.disable_prepacking", "1")
        source = str(self.artifacts.component_path(component, "onnx"))
        return ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(backend.OnnxRuntimeBackend, "_cpu_session", from_source)
    assert np.array_equal(first, _ort_image(sd_artifacts, tmp_path / "unused"))


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_new_cache_entries_are_recorded_beside_the_next_compile_and_before_ready(
    tmp_path, sd_artifacts, monkeypatch, backend
):
    """A first start hashes each new entry in another thread while the next component compiles, but the pipeline
    is ready only once every entry has its record and every folder is unlocked: a process starting next never
    finds an entry without one (which it would remove as half-written)."""
    import fcntl

    from turbo_runtime import files
    from turbo_runtime.pipeline import TurboPipeline

    recorded_in = []
    record = files._record_and_unlock

    def slow_record(folder, lock):
        recorded_in.append(threading.current_thread().name)
        time.sleep(0.3)  # longer than the tiny components take to compile
        record(folder, lock)

    monkeypatch.setattr(files, "_record_and_unlock", slow_record)
    cache = tmp_path / "cache"
    TurboPipeline.from_artifacts(sd_artifacts, backend, threads=1, cache_dir=cache, vae_encoder=False)
    folders = sorted(f for f in cache.iterdir() if f.is_dir())
    assert [f.name.rsplit("-", 1)[0] for f in folders] == ["text_encoder", "unet", "vae_decoder"]
    assert len(recorded_in) == 3 and all(name.startswith("cache-records") for name in recorded_in)
    for folder in folders:
        entries = files._cache_entries(folder)
        assert entries
        for entry in entries:
            assert entry.with_name(entry.name + ".sha256").read_text().strip() == files.sha256_file(entry)
        with open(folder / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if a thread still held it


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_compile_cache_folders_no_start_used_for_the_kept_days_are_removed(
    tmp_path, sd_artifacts, monkeypatch, backend
):
    """Artifacts re-exported or deleted leave their folders in the compile cache: a start removes those that no
    start has used for TURBO_RUNTIME_CACHE_KEEP_DAYS (30 by default), keeps the others, its own included, and
    leaves alone one that another process holds."""
    import fcntl

    from turbo_runtime.pipeline import TurboPipeline

    cache = tmp_path / "cache"

    def unused_for(folder: Path, days: float) -> Path:
        then = time.time() - days * 86400
        os.utime(folder / ".lock", (then, then))
        return folder

    def leftover(name: str, days: float) -> Path:
        folder = cache / name
        folder.mkdir(parents=True)
        (folder / "4242.blob").write_bytes(b"compiled")
        (folder / "4242.blob.sha256").write_text("0" * 64 + "\n")
        (folder / ".lock").touch()
        return unused_for(folder, days)

    def start() -> list[str]:
        TurboPipeline.from_artifacts(sd_artifacts, backend, threads=1, cache_dir=cache, vae_encoder=False)
        return sorted(f.name for f in cache.iterdir())

    stale, held, recent = leftover("unet-00aa", 31), leftover("unet-00bb", 31), leftover("unet-00cc", 29)
    with open(held / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as another process checking or writing it would
        names = start()
    own = [n for n in names if n not in ("unet-00bb", "unet-00cc")]
    assert [n.rsplit("-", 1)[0] for n in own] == ["text_encoder", "unet", "vae_decoder"]
    assert not stale.exists() and (held / "4242.blob").exists() and (recent / "4242.blob").exists()

    for name in names:  # a month passes
        unused_for(cache / name, 31)
    monkeypatch.setenv("TURBO_RUNTIME_CACHE_KEEP_DAYS", "inf")
    assert start() == names
    monkeypatch.setenv("TURBO_RUNTIME_CACHE_KEEP_DAYS", "1")
    assert start() == own  # its own folders used again, so kept; every other one removed


def test_a_bad_cache_keep_days_is_refused_before_loading(tmp_path, sd_artifacts):
    out = tmp_path / "x.png"
    env = {"TURBO_RUNTIME_CACHE": str(tmp_path / "cache"), "TURBO_RUNTIME_CACHE_KEEP_DAYS": "a month"}
    result = run_cli("turbo-run", "--artifacts", str(sd_artifacts), "--backend", "openvino", "--prompt", "x",
                     "--out", str(out), env=env)  # fmt: skip
    assert_one_line_error(result, "TURBO_RUNTIME_CACHE_KEEP_DAYS", "'a month'")
    assert not out.exists() and not (tmp_path / "cache" / "openvino-cache").exists()


@pytest.mark.parametrize(
    "entry,change",
    [("model.data", "truncated"), ("model.data", "a flipped byte"), ("model.onnx", "a flipped byte"),
     ("optimized.json", "removed"), ("model.data.sha256", "removed")],
)  # fmt: skip
def test_a_modified_onnxruntime_cache_entry_is_rebuilt(tmp_path, sd_artifacts, caplog, entry, change):
    """A saved graph whose files no longer match the sha256 recorded when they were written (or whose record is
    gone, as when its writer died) is removed and saved again; nothing half-written is ever loaded."""
    cache = tmp_path / "cache"
    first = _ort_image(sd_artifacts, cache)
    unet = _ort_entries(cache)["unet"]
    path = unet / entry
    stat = path.stat()
    if change == "truncated":
        os.truncate(path, stat.st_size // 2)
    elif change == "removed":
        path.unlink()
    else:
        flip_middle_byte(path)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as a copy that preserves times would leave it
    saved = {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file() and p.name != ".lock"}
    with caplog.at_level("WARNING"):
        second = _ort_image(sd_artifacts, cache)
    assert np.array_equal(first, second)
    if change != "removed":  # a missing entry, or one without its record, is made again without a warning
        assert "was modified since it was written" in caplog.text
    rebuilt = json.loads((unet / "optimized.json").read_text())["files"]
    assert all((unet / name).stat().st_mtime_ns != saved.get(unet / name) for name in rebuilt)  # written again
    from turbo_runtime.files import sha256_file

    for name in [*rebuilt, "optimized.json"]:
        assert (unet / f"{name}.sha256").read_text().strip() == sha256_file(unet / name)
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in saved.items() if not p.is_relative_to(unet))  # reused


@pytest.mark.parametrize(
    "setting,value",
    [("onnxruntime", "0.0.0-other"), ("cpu_class", "avx2"), ("cpu_flags", ["avx2", "fma", "f16c"])],
)
def test_a_saved_graph_is_never_loaded_under_other_settings(tmp_path, sd_artifacts, monkeypatch, setting, value):
    """Another ONNX Runtime version, CPU class or set of CPU flags names another folder: the graph saved under the
    first settings is neither loaded nor touched."""
    from turbo_runtime.backends import onnxruntime_backend as backend

    cache = tmp_path / "cache"
    first = _ort_image(sd_artifacts, cache)
    before = {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file() and p.name != ".lock"}
    settings = backend.optimized_graph_settings
    monkeypatch.setattr(backend, "optimized_graph_settings", lambda provider: {**settings(provider), setting: value})
    second = _ort_image(sd_artifacts, cache)
    assert np.array_equal(first, second)
    after = [f for f in cache.iterdir() if f.is_dir()]
    assert len(after) == 8  # four components under each settings
    assert {p: p.stat().st_mtime_ns for p in before} == before
    new = [f for f in after if not any(p.is_relative_to(f) for p in before)]
    assert [json.loads((f / "optimized.json").read_text())[setting] for f in new] == [value] * 4


def test_a_saved_graph_that_does_not_load_is_optimized_again(tmp_path, sd_artifacts, caplog):
    """A saved graph whose record matches but which ONNX Runtime refuses (written wrong) is written again."""
    from turbo_runtime.files import sha256_file

    cache = tmp_path / "cache"
    first = _ort_image(sd_artifacts, cache)
    unet = _ort_entries(cache)["unet"]
    (unet / "model.onnx").write_bytes(b"not a graph")
    (unet / "model.onnx.sha256").write_text(sha256_file(unet / "model.onnx") + "\n")
    with caplog.at_level("WARNING"):
        second = _ort_image(sd_artifacts, cache)
    assert "does not load" in caplog.text
    assert np.array_equal(first, second)
    assert (unet / "model.onnx.sha256").read_text().strip() == sha256_file(unet / "model.onnx")
