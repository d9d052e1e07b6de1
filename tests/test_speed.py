"""Speed settings (AMP, channels_last, compile) as recipe fields, and the training-throughput benchmark that
the GPU check calls; the CUDA variants run where a GPU is present and skip with a reason elsewhere."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from fuse_export.errors import RecipeError
from fuse_export.training.recipe import load_recipe, recipe_from_dict
from fuse_export.training.speed import make_precision

ROOT = Path(__file__).parents[1]


def _bench_module():
    path = ROOT / "benchmarks" / "gpu_train_throughput.py"
    spec = importlib.util.spec_from_file_location("gpu_train_throughput", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_speed_fields_are_validated():
    r = recipe_from_dict({"train": {"amp": "bf16", "channels_last": True, "compile": False}}, "r.toml")
    assert (r.train.amp, r.train.channels_last, r.train.compile, r.train.deterministic) == ("bf16", True, False, False)
    with pytest.raises(RecipeError, match=r"r.toml: train.amp is 'fp8'; choose one of none, bf16, fp16"):
        recipe_from_dict({"train": {"amp": "fp8"}}, "r.toml")
    with pytest.raises(RecipeError, match="train.channels_last must be true or false"):
        recipe_from_dict({"train": {"channels_last": "yes"}}, "r.toml")
    with pytest.raises(RecipeError, match="train.num_workers must be >= 0"):
        recipe_from_dict({"train": {"num_workers": -1}}, "r.toml")


def test_precision_modes_on_cpu():
    cpu = torch.device("cpu")
    assert not make_precision("none", cpu).scaler.is_enabled()
    assert not make_precision("bf16", cpu).scaler.is_enabled()  # bf16 needs no loss scaling
    assert make_precision("fp16", cpu).scaler.is_enabled()
    for amp, dtype in (("none", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        with make_precision(amp, cpu).autocast():
            assert torch.nn.Linear(4, 2)(torch.randn(3, 4)).dtype == dtype


def test_throughput_benchmark_runs_on_cpu():
    res = _bench_module().measure_train_throughput(device="cpu", batch=4, image_size=32, steps=1, warmup=1,
                                                   rounds=1, amp="bf16", loader_workers=0, loader_batches=2)
    assert res["fused_images_per_s"] > 0 and res["plain_resnet18_images_per_s"] > 0
    assert res["ratio"] == pytest.approx(res["fused_images_per_s"] / res["plain_resnet18_images_per_s"])
    assert res["loader"]["images"] == 8 and res["loader"]["images_per_s"] > 0
    assert res["settings"]["channels_last"] is True and res["meets_target"] in (True, False)


@pytest.mark.cuda
def test_throughput_benchmark_on_cuda():
    res = _bench_module().measure_train_throughput(device="cuda", batch=32, image_size=64, steps=3, warmup=2,
                                                   rounds=1, amp="bf16", loader_workers=2, loader_batches=2)
    assert res["fused_images_per_s"] > 0 and res["loader"]["pin_memory"] is True
    assert res["peak_gpu_memory_gib"] > 0


@pytest.mark.cuda
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_cuda_training_with_amp_channels_last_and_resume(tiny_csv, tmp_path, amp):
    from fuse_export.training.checkpoint import read_checkpoint
    from fuse_export.training.trainer import run_training

    recipe = load_recipe(ROOT / "recipes" / "synthetic-quick.toml").replace(
        data={"image_size": 48}, train={"epochs": 1, "batch_size": 32, "amp": amp, "channels_last": True,
                                        "num_workers": 2}, scn={"relabel_epoch": 1})
    first = run_training(recipe, str(tiny_csv), tmp_path, device="cuda", progress=False)
    state = read_checkpoint(first.last)
    assert "cuda" in state["rng"][0] and bool(state["scaler"]) == (amp == "fp16")
    assert all(v.is_contiguous() for v in state["model"].values())  # channels_last is not baked into files
    second = run_training(recipe.replace(train={"epochs": 2}), str(tiny_csv), tmp_path, device="cuda",
                          resume=True, progress=False)
    assert [r["epoch"] for r in second.history] == [1, 2]
