"""The training loop in-process: stops (signal, non-finite loss), distillation into a bLViT
assembled from routevit.layers, teachers from routevit and timm checkpoints, and eval."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file
from torch import nn
from train_util import TINY_VIT, make_image_folder, tiny_recipe, tiny_recipe_dict

from routevit.cli import main
from routevit.layers.encoder import BigLittleEncoder, Schedule
from routevit.models import list_models, register_model
from routevit.train import BadImageError, NonFiniteLossError, train
from routevit.train import checkpoint as ckpt
from routevit.train.losses import DistillationLoss


class TinyBigLittle(nn.Module):
    """A 3-layer bLViT (full, big.LITTLE, big.LITTLE) with the timm classifier interface."""

    def __init__(self, num_classes: int, img_size: int, drop_path_rate: float, keep_ratio: float = 0.5,
                 patch_size: int = 8, dim: int = 32) -> None:  # fmt: skip
        super().__init__()
        n = (img_size // patch_size) ** 2 + 1
        self.patch_embed = nn.Conv2d(3, dim, patch_size, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, n, dim) * 0.02)
        schedule = Schedule.big_little_from(3, first_routed=2, predict_after=(1,))
        self.encoder = BigLittleEncoder(
            dim, 2, 16, 1, schedule, keep_ratio, (0,), drop_path_rate=drop_path_rate
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], 1) + self.pos_embed
        return self.norm(self.encoder(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x[:, 0] if pre_logits else self.head(x[:, 0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


if "tiny_blvit_for_tests" not in list_models():

    @register_model
    def tiny_blvit_for_tests(pretrained: str | None = None, **kwargs: object) -> nn.Module:
        model = TinyBigLittle(**kwargs)
        if pretrained is not None:
            raise AssertionError("not used in these tests")
        return model


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("data"), per_class=10)


@pytest.fixture(scope="module")
def vanilla_run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("vanilla")
    train(tiny_recipe(data, out, train={"epochs": 1}))
    return out


def _events(out: Path, event: str) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


def test_sigterm_saves_and_resume_matches(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sections = {"train": {"epochs": 2, "ema": True}, "run": {"checkpoint_every_steps": 3}}
    full = train(tiny_recipe(data, tmp_path / "full", **sections))

    original = ckpt.save_checkpoint

    def save_then_sigterm(root, step, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        path = original(root, step, *args, **kwargs)
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives between steps 3 and 4
        return path

    monkeypatch.setattr(ckpt, "save_checkpoint", save_then_sigterm)
    stopped = train(tiny_recipe(data, tmp_path / "cut", **sections))
    monkeypatch.undo()
    assert (stopped.status, stopped.step, stopped.signal) == ("interrupted", 3, signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored

    with pytest.raises(FileExistsError, match="pass --resume"):
        train(tiny_recipe(data, tmp_path / "cut", **sections))
    resumed = train(tiny_recipe(data, tmp_path / "cut", **sections), resume=True)
    assert resumed.status == "finished" and resumed.step == full.step == 8
    assert resumed.replica_digests == full.replica_digests  # bit-identical weights
    for ema in (False, True):
        a, b = ckpt.load_weights(full.last_checkpoint, ema), ckpt.load_weights(resumed.last_checkpoint, ema)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_non_finite_loss_stops_and_keeps_last_good(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}
    forward = DistillationLoss.forward

    def nan_at_step_6(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        calls["n"] += 1
        total, parts = forward(self, *args, **kwargs)
        return (total * float("nan") if calls["n"] == 6 else total), parts

    monkeypatch.setattr(DistillationLoss, "forward", nan_at_step_6)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss nan at epoch 1, step 5.*step-00000004"):
        train(tiny_recipe(data, tmp_path, train={"epochs": 3}))
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "checkpoints")] == ["step-00000004"]


def test_distill_into_biglittle_from_routevit_and_timm_teachers(
    data: Path, vanilla_run: Path, tmp_path: Path
) -> None:
    model = {"name": "tiny_blvit_for_tests", "keep_ratio": 0.5, "kwargs": {}}
    teacher = {"teacher": "vit_tiny_patch16_224", "teacher_checkpoint": str(vanilla_run)}
    r1 = train(tiny_recipe(data, tmp_path / "a", model=model, train={"epochs": 1}, distill=teacher))
    fd = [e["loss_fd"] for e in _events(tmp_path / "a", "train")]
    assert len(fd) == 4 and all(0.0 < v < 2.0 for v in fd)
    assert r1.status == "finished"

    # the same teacher as a plain weights file, loaded by timm (weights_only)
    weights = tmp_path / "teacher.safetensors"
    save_file(ckpt.load_weights(ckpt.resolve_checkpoint(vanilla_run)), str(weights))
    train(tiny_recipe(data, tmp_path / "b", model=model, train={"epochs": 1},
                      distill={"teacher": "vit_tiny_patch16_224", "teacher_checkpoint": str(weights),
                               "teacher_kwargs": TINY_VIT}))  # fmt: skip
    assert [e["loss_fd"] for e in _events(tmp_path / "b", "train")] == pytest.approx(fd, abs=1e-6)


def test_eval_command(vanilla_run: Path, data: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["eval", str(vanilla_run), "--data", str(data), "--batch-size", "3"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 20  # the folder given, all of it (the run held out 2 per class)
    assert 0 <= result["top1"] <= result["top5"] == 100.0  # 2 classes
    assert result["gmacs"] > 0 and result["images_per_s"] > 0
    assert main(["eval", str(vanilla_run), "--data", str(data), "--holdout-per-class", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 4  # a hold-out, when asked
    assert main(["eval", str(vanilla_run)]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 4  # no --data: the recipe's split
    assert main(["eval", str(vanilla_run), "--data", str(data), "--ema"]) == 2
    assert "run trained without EMA" in capsys.readouterr().err
    assert main(["eval", str(vanilla_run), "--data", str(data), "--keep-ratio", "0.5"]) == 2
    assert "needs a routed model" in capsys.readouterr().err


def test_eval_at_another_keep_ratio(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = {"name": "blvit_deit_s_t", "keep_ratio": 0.5, "kwargs": {
        "patch_size": 8, "embed_dim": 32, "num_heads": 2, "little_dim": 16, "little_heads": 1, "depth": 3}}
    train(tiny_recipe(data, tmp_path / "run", model=model, train={"epochs": 1}))
    capsys.readouterr()
    results = {}
    for ratio in ("1.0", "0.25"):
        assert main(["eval", str(tmp_path / "run"), "--data", str(data), "--keep-ratio", ratio]) == 0
        results[ratio] = json.loads(capsys.readouterr().out)
    assert results["1.0"]["keep_ratio"] == 1.0 and results["0.25"]["keep_ratio"] == 0.25
    assert results["0.25"]["gmacs"] < results["1.0"]["gmacs"]


def test_cli_exit_status_after_sigint(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original, sent = ckpt.save_checkpoint, []

    def save_then_sigint(root, step, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        path = original(root, step, *args, **kwargs)
        if not sent:  # once: a second Ctrl-C means "stop now" (KeyboardInterrupt)
            sent.append(step)
            os.kill(os.getpid(), signal.SIGINT)
        return path

    monkeypatch.setattr(ckpt, "save_checkpoint", save_then_sigint)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe_dict(data, tmp_path / "out")))
    args = ["train", str(recipe), "--epochs", "1", "--set", "run.checkpoint_every_steps=1"]
    assert main(args) == 128 + signal.SIGINT
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "out" / "checkpoints")] == ["step-00000001"]
    assert _events(tmp_path / "out", "end")[0]["status"] == "interrupted"


def test_unreadable_image_is_counted_or_fails(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = make_image_folder(tmp_path / "d", per_class=6)
    (data / "class_1" / "img_000.jpg").write_bytes(b"\xff\xd8 truncated")
    train(tiny_recipe(data, tmp_path / "skip", train={"epochs": 1}))
    assert sum(e["skipped"] for e in _events(tmp_path / "skip", "train")) == 1
    assert "skipped 1 unreadable image(s)" in caplog.text
    with pytest.raises(BadImageError, match=r"class_1/img_000\.jpg"):
        train(tiny_recipe(data, tmp_path / "fail", train={"epochs": 1}, data={"on_bad_image": "error"}))
