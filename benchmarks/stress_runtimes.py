"""Every CPU runtime in one long-lived process, over and over, until it crashes or the time is up (issue 27).

The suite's long pytest process once died with SIGSEGV some tests after OpenVINO ran in it. `bench`, `serve`
and `fuse_export.load()` are long-lived processes too, so this script does in one worker process what they and
the suite do, in a random order drawn from a seed: load, run and close every CPU backend (eager PyTorch fp32 and
bf16, TorchScript, ONNX Runtime fp32/fp16/int8, OpenVINO f32/bf16/int8) through `fuse_export.load()`, several
predictors alive at once and closed in another order, two of them driven from two threads at once, export
(ONNX -> OpenVINO conversion, int8 calibration) into fresh folders that are deleted again, `fuse_export.bench`,
`doctor`, a few torch training steps, garbage collection. Every output is compared with the first output of the
same backend on the same batch: memory corruption that does not crash shows as a changed answer.

A supervisor runs workers one after another (`python -X faulthandler`, each with the next seed) until the
minutes are spent. Each worker appends every step to its own log before doing it, so a crash leaves the
sequence that led to it; the supervisor writes one JSON line per worker to --out (rc, signal, seconds,
steps, the last steps, faulthandler's traceback) and resumes from that file when started again.

    python benchmarks/stress_runtimes.py --minutes 20               # detached: setsid nohup ... &
    python benchmarks/stress_runtimes.py --minutes 3 --out /tmp/s.jsonl
    python benchmarks/stress_runtimes.py --minutes 20 --core-per-activation --out before.jsonl   # the code before
        the fix (60cd8a9): every OpenVINO runner activation makes its own `openvino.Core`
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "stress_runtimes.jsonl"
CPU_BACKENDS = ("pytorch", "pytorch-bf16", "torchscript", "onnxruntime", "onnxruntime-fp16", "onnxruntime-int8",
                "openvino", "openvino-bf16", "openvino-int8")
# Which OpenVINO Core each runner used; cells written before the mode was recorded ran the code before the fix.
MODES = {False: "shared Core", True: "Core per activation"}
WORKER_MINUTES = 6.0  # one worker's share before a fresh process (a crash usually ends it sooner)


def setup(workdir: Path) -> dict:
    """A tiny trained model and its export in every CPU format (cached in `workdir`)."""
    done = workdir / "setup.json"
    if done.is_file():
        return json.loads(done.read_text())
    from fuse_export.app.export_verify import export_checkpoint
    from fuse_export.data.synthetic import SyntheticSpec
    from fuse_export.data.synthetic_csv import write_fer2013_csv
    from fuse_export.exporters.formats import parse_formats
    from fuse_export.training.recipe import load_recipe
    from fuse_export.training.trainer import run_training

    workdir.mkdir(parents=True, exist_ok=True)
    csv = workdir / "faces.csv"
    write_fer2013_csv(csv, SyntheticSpec(samples_per_class=40, seed=3))
    recipe = load_recipe(HERE.parent / "recipes" / "synthetic-quick.toml").replace(
        data={"image_size": 64}, train={"epochs": 1, "batch_size": 32})
    run = run_training(recipe, str(csv), workdir / "run", device="cpu", progress=False)
    export = workdir / "export"
    # One folder, three calls (a precision applies to the formats that offer it); each call adds to the manifest.
    export_checkpoint(run.best, parse_formats("torchscript,onnx,openvino"), export)
    export_checkpoint(run.best, parse_formats("onnx"), export, precisions=["fp16", "int8"], calibration_data=csv,
                      calibration_samples=32)
    export_checkpoint(run.best, parse_formats("openvino"), export, precisions=["int8"], calibration_data=csv,
                      calibration_samples=32)
    info = {"csv": str(csv), "checkpoint": str(run.best), "export": str(export)}
    done.write_text(json.dumps(info))
    return info


class Worker:
    """One process's random walk over the actions; `log` gets each step before it runs."""

    def __init__(self, info: dict, seed: int, log: Path, core_per_activation: bool = False) -> None:
        import fuse_export
        from fuse_export.runners.registry import BACKENDS

        if core_per_activation:  # restore the behaviour before the fix: a new Core (CPU plugin, TBB arenas) each time
            from fuse_export.exporters import to_openvino
            from fuse_export.runners import openvino_runner

            openvino_runner.shared_core = lambda: to_openvino.import_openvino().Core()

        self.fx = fuse_export
        self.info = info
        self.rng = random.Random(seed)
        self.log = open(log, "a", buffering=1)  # line-buffered: a crash keeps every line written before it
        self.export = Path(info["export"])
        self.backends = [b for b in CPU_BACKENDS if BACKENDS[b].available()[0]]
        size = json.loads((self.export / "manifest.json").read_text())["preprocessing"]["image_size"]
        gen = np.random.default_rng(seed)
        self.batches = [gen.integers(0, 256, (n, size, size, 3), dtype=np.uint8) for n in (1, 3, 8)]
        self.first: dict[tuple[str, int], np.ndarray] = {}
        self.mismatches = 0
        self.step = 0

    def note(self, action: str, **kw) -> None:
        self.step += 1
        self.log.write(json.dumps({"step": self.step, "t": round(time.time(), 3), "action": action, **kw}) + "\n")

    def check(self, backend: str, i: int, probs: np.ndarray) -> None:
        ref = self.first.setdefault((backend, i), probs.copy())
        if not np.allclose(ref, probs, atol=1e-5, rtol=0):
            self.mismatches += 1
            self.note("MISMATCH", backend=backend, batch=i, max_abs=float(np.abs(ref - probs).max()))

    def predictor(self, backend: str):
        return self.fx.load(self.export, backend=backend, threads=self.rng.choice((1, 2)),
                            fast_startup=self.rng.random() < 0.5)

    def run_one(self, p, backend: str) -> None:
        i = self.rng.randrange(len(self.batches))
        self.check(backend, i, p.predict_pixels(self.batches[i]).probabilities)

    # --- actions -------------------------------------------------------------------------------------------
    def a_cycle(self) -> None:
        """Load, run a few batches, close; sometimes activate the same backend twice in a row."""
        backend = self.rng.choice(self.backends)
        self.note("cycle", backend=backend)
        for _ in range(self.rng.choice((1, 2))):
            with self.predictor(backend) as p:
                for _ in range(self.rng.randint(1, 4)):
                    self.run_one(p, backend)

    def a_many(self) -> None:
        """Several predictors alive at once, run interleaved, closed in a shuffled order."""
        chosen = self.rng.sample(self.backends, k=min(len(self.backends), self.rng.randint(2, 5)))
        self.note("many", backends=chosen)
        alive = [(b, self.predictor(b).__enter__()) for b in chosen]
        for _ in range(3):
            for b, p in self.rng.sample(alive, len(alive)):
                self.run_one(p, b)
        for b, p in self.rng.sample(alive, len(alive)):
            p.__exit__(None, None, None)

    def a_threads(self) -> None:
        """Two predictors of different backends driven from two threads at the same time."""
        pair = self.rng.sample(self.backends, 2)
        self.note("threads", backends=pair)
        errors: list[BaseException] = []

        def drive(b: str, seed: int) -> None:
            rng = random.Random(seed)
            try:
                with self.predictor(b) as p:
                    for _ in range(4):
                        i = rng.randrange(len(self.batches))
                        self.check(b, i, p.predict_pixels(self.batches[i]).probabilities)
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        threads = [threading.Thread(target=drive, args=(b, self.rng.random())) for b in pair]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]

    def a_export(self) -> None:
        """Export ONNX + OpenVINO (fp32 or int8, with calibration) into a fresh folder, run it, delete it."""
        from fuse_export.app.export_verify import export_checkpoint
        from fuse_export.exporters.formats import parse_formats

        precision = self.rng.choice(("fp32", "int8"))
        self.note("export", precision=precision)
        out = Path(tempfile.mkdtemp(prefix="stress-export-"))
        try:
            export_checkpoint(self.info["checkpoint"], parse_formats("onnx,openvino"), out / "e",
                              verify=self.fx.VerifyOptions(samples=8), precisions=[precision],
                              calibration_data=self.info["csv"], calibration_samples=16)
            backend = "openvino" if precision == "fp32" else "openvino-int8"
            with self.fx.load(out / "e", backend=backend) as p:
                p.predict_pixels(self.batches[0])
        finally:
            shutil.rmtree(out, ignore_errors=True)

    def a_bench(self) -> None:
        chosen = tuple(self.rng.sample(self.backends, k=min(len(self.backends), 3)))
        self.note("bench", backends=chosen)
        opts = self.fx.BenchOptions(backends=chosen, batch_sizes=(1, 4), warmup=1, iterations=3, min_time_s=0.0,
                                    rounds=1, threads=self.rng.choice((1, 2)))
        result = self.fx.bench(self.export, opts)
        if result.failures():
            raise RuntimeError(f"bench parity failed: {[r.backend for r in result.failures()]}")

    def a_doctor(self) -> None:
        from fuse_export.app.doctor import doctor_report

        self.note("doctor")
        doctor_report()

    def a_train(self) -> None:
        """A few SGD steps: autograd and torch's OpenMP pool at work between the runtimes."""
        import torch

        from fuse_export.training.checkpoint import load_model

        self.note("train")
        model = load_model(self.info["checkpoint"]).model.train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        x = torch.randn(8, 3, 64, 64)
        for _ in range(3):
            logits, _, _ = model(x)
            logits.sum().backward()
            opt.step()
            opt.zero_grad()

    def a_loader(self) -> None:
        """A DataLoader with forked workers while the runtimes' thread pools are alive (as training in the suite)."""
        import torch
        from torch.utils.data import DataLoader, TensorDataset

        self.note("loader")
        data = TensorDataset(torch.randn(64, 3, 64, 64), torch.arange(64) % 7)
        for x, _ in DataLoader(data, batch_size=16, num_workers=2):
            x.mean().item()

    def a_subprocess(self) -> None:
        """A child process waited on with `communicate` (where the suite's crash was noticed)."""
        self.note("subprocess")
        subprocess.run([sys.executable, "-c", "print('x' * 10000)"], capture_output=True, check=True, timeout=60)

    def a_gc(self) -> None:
        self.note("gc")
        gc.collect()

    ACTIONS = (("a_cycle", 8), ("a_many", 4), ("a_threads", 3), ("a_export", 1), ("a_bench", 1), ("a_doctor", 1),
               ("a_train", 2), ("a_loader", 1), ("a_subprocess", 1), ("a_gc", 2))

    def walk(self, until: float) -> None:
        names, weights = zip(*self.ACTIONS)
        while time.time() < until:
            getattr(self, self.rng.choices(names, weights)[0])()
        self.note("done", mismatches=self.mismatches)


def worker_main(args: argparse.Namespace) -> int:
    info = json.loads((Path(args.workdir) / "setup.json").read_text())
    w = Worker(info, args.seed, Path(args.steps_log), args.core_per_activation)
    w.walk(time.time() + args.worker_minutes * 60)
    return 3 if w.mismatches else 0


def tail_lines(path: Path, n: int) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return []


def supervise(args: argparse.Namespace) -> int:
    from fuse_export.cpuinfo import cpu_features

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cells = [json.loads(line) for line in out.read_text().splitlines() if line.strip()] if out.is_file() else []
    spent = sum(c["seconds"] for c in cells)
    print(f"{len(cells)} workers already in {out} ({spent / 60:.1f} min); running to {args.minutes} min", flush=True)
    setup(Path(args.workdir))
    seed = max((c["seed"] for c in cells), default=-1) + 1
    cpu = cpu_features()
    while spent < args.minutes * 60:
        minutes = min(WORKER_MINUTES, (args.minutes * 60 - spent) / 60)
        logs = Path(args.workdir) / f"worker-{seed}"
        steps, stderr = logs.with_suffix(".steps.jsonl"), logs.with_suffix(".stderr")
        steps.unlink(missing_ok=True)
        t0 = time.time()
        with open(stderr, "w") as err:
            cmd = [sys.executable, "-X", "faulthandler", __file__, "--worker", "--seed", str(seed),
                   "--workdir", args.workdir, "--steps-log", str(steps), "--worker-minutes", str(minutes)]
            cmd += ["--core-per-activation"] if args.core_per_activation else []
            rc = subprocess.run(cmd, stdout=err, stderr=err).returncode
        seconds = round(time.time() - t0, 1)
        lines = tail_lines(steps, 12)
        cell = {"seed": seed, "rc": rc, "signal": signal.Signals(-rc).name if rc < 0 else None,
                "mode": MODES[args.core_per_activation], "seconds": seconds,
                "steps": len(steps.read_text().splitlines()) if steps.is_file() else 0,
                "crashed": rc < 0, "mismatch": rc == 3, "last_steps": [json.loads(x) for x in lines],
                "stderr_tail": tail_lines(stderr, 40) if rc else [], "cpu": cpu.model,
                "python": sys.version.split()[0], "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        with open(out, "a") as fh:
            fh.write(json.dumps(cell) + "\n")
        spent += seconds
        print(f"worker seed {seed}: rc {rc} ({cell['signal'] or 'ok'}) after {seconds:.0f} s, {cell['steps']} steps",
              flush=True)
        seed += 1
    cells = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    crashes = [c for c in cells if c["crashed"]]
    print(f"{len(cells)} workers, {sum(c['seconds'] for c in cells) / 60:.1f} min, {len(crashes)} crashed, "
          f"{sum(c['mismatch'] for c in cells)} with changed answers")
    return 1 if crashes else 0


def report(out: Path) -> str:
    """The markdown summary RESULTS.md quotes, from the JSONL alone."""
    cells = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    crashes = [c for c in cells if c["crashed"]]
    lines = ["| seed | date | CPU | OpenVINO | seconds | steps | rc | signal |",
             "|---:|---|---|---|---:|---:|---:|---|"]
    lines += [f"| {c['seed']} | {c['date']} | {c['cpu']} | {c.get('mode', MODES[True])} | {c['seconds']:.0f} | "
              f"{c['steps']} | {c['rc']} | {c['signal'] or '-'} |" for c in cells]
    lines.append("")
    lines.append(f"{len(cells)} workers, {sum(c['seconds'] for c in cells) / 60:.1f} min, "
                 f"{sum(c['steps'] for c in cells)} steps: {len(crashes)} crashed, "
                 f"{sum(c['mismatch'] for c in cells)} with a changed answer.")
    for c in crashes:
        lines.append(f"- seed {c['seed']}: {c['signal']} after {c['seconds']:.0f} s; last steps: "
                     + "; ".join(f"{s['action']} {s.get('backend') or s.get('backends') or ''}".strip()
                                 for s in c["last_steps"][-5:]))
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=20.0, help="total worker time (resumed from --out)")
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "fuse-export-stress"))
    ap.add_argument("--core-per-activation", action="store_true",
                    help="run the code before the fix: every OpenVINO activation makes its own Core")
    ap.add_argument("--report", action="store_true", help="print the markdown summary of --out and exit")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--steps-log", help=argparse.SUPPRESS)
    ap.add_argument("--worker-minutes", type=float, default=WORKER_MINUTES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.report:
        print(report(Path(args.out)))
        return 0
    return worker_main(args) if args.worker else supervise(args)


if __name__ == "__main__":
    sys.exit(main())
