"""One benchmark subject in its own process, so its start-up and peak memory are its own.

Speaks JSON lines: it prints {"event": "ready", ...} once loaded, then answers each {"cmd": "run"} read from
stdin with {"event": "run", ...}, and {"cmd": "quit"} with {"event": "exit", "peak_rss_bytes": ...}.
Subjects: a turbo-runtime backend on exported artifacts, or "diffusers" (its own pipeline on the source model).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time


def peak_rss_bytes() -> int:
    """This process's peak resident memory. Not ru_maxrss: Linux carries the resident set of the parent at the
    fork/exec that started us into it, so a worker of a large turbo-bench process would report the parent's."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _emit(**event) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def reported_precision(engine: str | None, exported: str, dtype: str | None, fmt: str | None) -> str:
    """What the engine computes in, else the dtype asked for or the exported graph's precision; OpenVINO computes
    an int8 export's unquantized part in its own precision: "bf16, int8 quantized". `fmt`: the export format the
    backend reads, None for the torch backend, which computes from the source model (nothing quantized)."""
    exported = {"fp32": "float32"}.get(exported, exported) if fmt else "float32"
    if not engine:
        return dtype or exported
    return f"{engine}, {exported} quantized" if exported.startswith("int8") and engine != exported else engine


class TurboSubject:
    def __init__(self, args):
        from turbo_runtime.pipeline import TurboPipeline

        self.pipe = TurboPipeline.from_artifacts(  # text-to-image, loaded as turbo-run loads it: no VAE encoder
            args.artifacts,
            args.backend,
            dtype=args.dtype,
            threads=args.threads,
            cache_dir=args.cache_dir,
            vae_encoder=False,
        )
        self.args = args
        engine = getattr(self.pipe.backend, "inference_precision", None)
        self.precision = reported_precision(
            engine, self.pipe.artifacts.precision, args.dtype, self.pipe.backend.artifact_format
        )

    def run(self):
        import numpy as np

        a = self.args
        t0 = time.perf_counter()
        out = self.pipe(
            a.prompt, num_inference_steps=a.steps, guidance_scale=a.guidance_scale, seed=a.seed, output_type="np"
        )
        pixels = (out.images * 255).round().astype(np.uint8)
        e2e = time.perf_counter() - t0
        t = out.timings
        stages = {"text_encoder": t["text_encoder"], "unet": t["unet"], "vae_decoder": t["vae_decoder"]}
        return e2e, stages, pixels


class DiffusersSubject:
    """diffusers' own pipeline on the source model, CPU float32, same latents and per-step noise."""

    def __init__(self, args):
        import diffusers
        import numpy as np
        import torch
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        for lib in (diffusers_logging, transformers_logging):
            lib.disable_progress_bar()
            lib.set_verbosity_error()

        from export.sources import resolve
        from export.wrappers import replaced_components
        from turbo_runtime.artifacts import Artifacts
        from turbo_runtime.pipeline import default_scheduler
        from turbo_runtime.sampler import SCHEDULERS

        art = Artifacts.load(args.artifacts)
        source = resolve(art.model_id)
        if args.threads:
            torch.set_num_threads(args.threads)
        cls = getattr(diffusers, art.family.pipeline_class)
        # The tiny VAE the artifacts were exported with, if any
        vae_path = resolve(art.manifest["vae"]["id"], vae=True).path if art.manifest.get("vae") else None
        replaced = replaced_components(art.family, vae_path)
        self.pipe = cls.from_pretrained(source.path, variant=source.variant, dtype=torch.float32, **replaced)
        scheduler = SCHEDULERS[default_scheduler(art)]  # the one turbo-runtime runs by default
        if type(self.pipe.scheduler).__name__ != scheduler:
            self.pipe.scheduler = getattr(diffusers, scheduler).from_config(self.pipe.scheduler.config)
        self.pipe.set_progress_bar_config(disable=True)
        self.args, self.art, self.np, self.torch = args, art, np, torch
        self.precision = "float32"
        self.stage_times: dict[str, list[float]] = {}
        for name, module in (("text_encoder", self.pipe.text_encoder), ("unet", self.pipe.unet)):
            self._time(name, module)
        self._time("vae_decoder", self.pipe.vae, method="decode")
        self._time("text_encoder", getattr(self.pipe, "text_encoder_2", None))

    def _time(self, stage: str, module, method: str = "forward") -> None:
        if module is None:
            return
        inner = getattr(module, method)

        def timed(*a, **kw):
            t0 = time.perf_counter()
            try:
                return inner(*a, **kw)
            finally:
                self.stage_times.setdefault(stage, []).append(time.perf_counter() - t0)

        setattr(module, method, timed)

    def run(self):
        import diffusers.schedulers.scheduling_euler_ancestral_discrete as ancestral

        from turbo_runtime.sampler import NoiseSource

        a, np, torch = self.args, self.np, self.torch
        shape = self.art.latent_shape
        # The same initial latents and, for ancestral samplers, the same per-step noise as turbo-runtime's loop.
        source = NoiseSource(a.seed)
        latents = torch.from_numpy(source.normal(shape))
        ancestral.randn_tensor = lambda shape, **_: torch.from_numpy(source.normal(tuple(shape)))
        self.stage_times = {}
        t0 = time.perf_counter()
        with torch.inference_mode():
            images = self.pipe(
                a.prompt,
                num_inference_steps=a.steps,
                guidance_scale=a.guidance_scale,
                latents=latents,
                height=self.art.height,
                width=self.art.width,
                output_type="np",
            ).images
        pixels = (images * 255).round().astype(np.uint8)
        e2e = time.perf_counter() - t0
        st = self.stage_times
        stages = {
            "text_encoder": sum(st.get("text_encoder", [])),
            "unet": st.get("unet", []),
            "vae_decoder": sum(st.get("vae_decoder", [])),
        }
        return e2e, stages, pixels


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--subject", required=True, help="torch | onnxruntime | openvino | diffusers")
    p.add_argument("--artifacts", required=True)
    p.add_argument("--dtype")
    p.add_argument("--threads", type=int)
    p.add_argument("--cache-dir")
    p.add_argument("--prompt", required=True)
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--guidance-scale", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    args.backend = args.subject
    t0 = time.perf_counter()
    subject = DiffusersSubject(args) if args.subject == "diffusers" else TurboSubject(args)
    _emit(event="ready", load_s=time.perf_counter() - t0, precision=subject.precision)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "quit":
            break
        e2e, stages, pixels = subject.run()
        if cmd.get("save"):
            import numpy as np

            np.save(cmd["save"], pixels)
        _emit(event="run", e2e_s=e2e, stages=stages)
    _emit(event="exit", peak_rss_bytes=peak_rss_bytes())


if __name__ == "__main__":
    main()
