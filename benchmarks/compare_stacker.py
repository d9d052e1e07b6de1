"""Which stacker? The linear one over [p_dcnn, p_scn, alpha] against the interaction one over
[log p_dcnn, log p_scn, alpha log p_dcnn, alpha log p_scn, alpha], paired per seed on the noisy-label benchmark.

Per (noise rate, seed) one fused model is trained (benchmarks/noisy_labels.py's data, recipe and budget: the
synthetic faces at 40x40, 300 per class, 12 epochs, the final epoch's weights); then both stackers are fitted
on the same held-out split (its labels as given, noisy like the training labels) by L-BFGS with the recipe's
L2, and scored on the clean validation and test splits. Paired differences (interaction - linear) per seed.

    nice -n 10 python benchmarks/compare_stacker.py          # 6 trainings, ~10-20 min on 2 shared cores
Results: benchmarks/results/compare_stacker.json and .md. Runs are cached under --work.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from noisy_labels import Config, make_data  # noqa: E402

from fuse_export.data.fer2013 import load_fer2013_csv  # noqa: E402
from fuse_export.data.torchdata import eval_batches  # noqa: E402
from fuse_export.data.transforms import eval_transform  # noqa: E402
from fuse_export.fileio import write_json  # noqa: E402
from fuse_export.model.stacker import STACKER_KINDS, Stacker, fit_stacker  # noqa: E402
from fuse_export.train.build import holdout_split  # noqa: E402
from fuse_export.train.checkpoint import load_model  # noqa: E402
from fuse_export.train.loop import predict_heads  # noqa: E402
from fuse_export.train.trainer import run_training  # noqa: E402

RATES = (0.0, 0.3)


def measure(cfg: Config, rate: float, seed: int, clean: Path, noisy: Path, run_dir: Path) -> dict[str, Any]:
    recipe = cfg.recipe(seed)
    start = time.perf_counter()
    run_training(recipe, str(noisy), run_dir, device="cpu", progress=False)
    seconds = time.perf_counter() - start
    loaded = load_model(run_dir / "last.pt")
    model, tf, cpu = loaded.model, eval_transform(loaded.preprocessing), torch.device("cpu")
    noisy_train = load_fer2013_csv(noisy).splits["train"]
    _, hold_idx = holdout_split(noisy_train, recipe.stacking.holdout_fraction, recipe.train.seed)
    hold = noisy_train.subset(hold_idx)
    clean_ds = load_fer2013_csv(clean)
    heads = {name: predict_heads(model, eval_batches(split, tf, 128), cpu)
             for name, split in (("hold", hold), ("val", clean_ds.splits["val"]), ("test", clean_ds.splits["test"]))}
    labels = {"hold": torch.from_numpy(hold.labels), "val": torch.from_numpy(clean_ds.splits["val"].labels),
              "test": torch.from_numpy(clean_ds.splits["test"].labels)}
    row: dict[str, Any] = {"rate": rate, "seed": seed, "train_seconds": round(seconds, 1), "holdout": len(hold),
                           "geometry": loaded.preprocessing.geometry}
    for kind in STACKER_KINDS:
        st = Stacker(model.config.num_classes, kind)
        h = heads["hold"]
        loss = fit_stacker(st, st.features(h.dcnn_logits, h.scn_logits, h.alpha), labels["hold"],
                           recipe.stacking.weight_decay, recipe.stacking.max_iter)
        with torch.no_grad():
            acc = {s: float((st(heads[s].dcnn_logits, heads[s].scn_logits, heads[s].alpha).argmax(1) == labels[s])
                            .float().mean()) for s in ("val", "test")}
        row[kind] = {"holdout_loss": loss, **acc}
    for s in ("val", "test"):
        row[f"heads_{s}"] = {"dcnn": float((heads[s].dcnn_logits.argmax(1) == labels[s]).float().mean()),
                             "scn": float((heads[s].scn_logits.argmax(1) == labels[s]).float().mean())}
    return row


def cached(cfg: Config, rate: float, seed: int, clean: Path, noisy: Path, run_dir: Path) -> dict[str, Any]:
    torch.set_num_threads(1)
    cache = run_dir / "measured.json"
    key = json.dumps([asdict(replace(cfg, rates=(), seeds=())), rate, seed], sort_keys=True)
    if cache.exists() and json.loads(cache.read_text()).get("key") == key:
        return json.loads(cache.read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "train.log", "w") as log, contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
        row = measure(cfg, rate, seed, clean, noisy, run_dir) | {"key": key}
    write_json(cache, row)
    for ckpt in run_dir.glob("*.pt"):
        ckpt.unlink()
    return row


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for rate in sorted({r["rate"] for r in rows}):
        mine = sorted((r for r in rows if r["rate"] == rate), key=lambda r: r["seed"])
        entry: dict[str, Any] = {}
        for s in ("val", "test"):
            diffs = [r["interaction"][s] - r["linear"][s] for r in mine]
            entry[s] = {k: statistics.fmean(r[k][s] for r in mine) for k in STACKER_KINDS} | {
                "diff_per_seed": diffs, "diff_mean": statistics.fmean(diffs),
                "diff_sd": statistics.stdev(diffs) if len(diffs) > 1 else 0.0,
                "interaction_wins": sum(d > 0 for d in diffs), "ties": sum(d == 0 for d in diffs)}
        out[f"{rate:.1f}"] = entry
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--work", type=Path, default=Path("runs/compare_stacker"))
    ap.add_argument("--name", default="compare_stacker")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a noisy_labels Config field (JSON), e.g. --set 'seeds=[0]'")
    args = ap.parse_args()
    cfg = replace(Config(), rates=RATES)
    for item in args.set:
        k, _, v = item.partition("=")
        val = json.loads(v)
        cfg = replace(cfg, **{k: tuple(val) if isinstance(val, list) else val})
    work = args.work / args.name
    clean, noisy, data_info = make_data(cfg, work)
    jobs = [(cfg, r, s, clean, noisy[(r, s)], work / f"noise{int(round(r * 100)):02d}_seed{s}")
            for r in cfg.rates for s in cfg.seeds]
    rows, start = [], time.perf_counter()
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        for i, fut in enumerate(as_completed([pool.submit(cached, *j) for j in jobs]), 1):
            row = fut.result()
            rows.append(row)
            print(f"[{i}/{len(jobs)} {time.perf_counter() - start:.0f}s] noise {row['rate']:.0%} seed {row['seed']}: "
                  f"val linear {row['linear']['val']:.3f} interaction {row['interaction']['val']:.3f}", flush=True)
    summary = summarize(rows)
    # The default is chosen on validation accuracy, averaged over both noise rates.
    val = {k: statistics.fmean(summary[r]["val"][k] for r in summary) for k in STACKER_KINDS}
    chosen = max(val, key=val.get)
    doc = {"config": asdict(cfg), "data": data_info, "runs": sorted(rows, key=lambda r: (r["rate"], r["seed"])),
           "summary": summary, "val_mean_over_rates": val, "chosen": chosen,
           "command": " ".join(["python benchmarks/compare_stacker.py", *sys.argv[1:]]),
           "wall_seconds": time.perf_counter() - start, "date": time.strftime("%Y-%m-%d", time.gmtime())}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / f"{args.name}.json", doc)
    lines = [f"# Stacker comparison ({doc['date']})", "", f"Command: `{doc['command']}`", "",
             f"Config: {json.dumps(doc['config'])}; wall {doc['wall_seconds']:.0f} s.", "",
             "| noise | split | linear | interaction | paired diff (mean +- sd) | interaction better in |",
             "|---|---|---|---|---|---|"]
    for rate, entry in summary.items():
        for s in ("val", "test"):
            e = entry[s]
            lines.append(f"| {float(rate):.0%} | {s} | {100 * e['linear']:.1f} | {100 * e['interaction']:.1f} | "
                         f"{100 * e['diff_mean']:+.1f} +- {100 * e['diff_sd']:.1f} | "
                         f"{e['interaction_wins']}/{len(e['diff_per_seed'])} seeds |")
    lines += ["", f"Chosen on validation (mean over rates): **{chosen}**", ""]
    (args.out / f"{args.name}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
