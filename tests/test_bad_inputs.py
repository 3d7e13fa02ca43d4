"""Every command, every bad input: one line on stderr that says what was expected and what came,
exit status 2 (1 for a failed run, 128 + N for a signal), no traceback, no escape codes, and
nothing written or lost.

One table: each row runs a subcommand (in-process, through ``routevit.cli.main``) against one
kind of bad input; a few rows run in a real process to check the exit status the shell sees.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file
from train_util import ROOT, TINY_VIT, make_image_folder, subprocess_env, tiny_recipe, tiny_recipe_dict

from routevit import create_model
from routevit.cli import main
from routevit.train import train

BLVIT = {"patch_size": 8, "embed_dim": 32, "num_heads": 2, "little_dim": 16, "little_heads": 1, "depth": 3}
BLVIT_SET = [f"--set={k}={v}" for k, v in {**BLVIT, "num_classes": 2, "img_size": 16}.items()]


class _Payload:
    """Unpickling this would write a file: the proof that a refused pickle never ran."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.write_text, (self.target, "code ran while loading"))


def _recipe(world: Path, name: str, **sections: dict) -> str:
    values = tiny_recipe_dict(world / "data", world / f"out_{name}", **sections)
    path = world / "recipes" / f"{name}.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Good and bad inputs side by side, built once."""
    w = tmp_path_factory.mktemp("world")
    make_image_folder(w / "data", classes=2, per_class=6)
    make_image_folder(w / "four", classes=4, per_class=2)
    for c in ("cat", "dog"):
        (w / "not_images" / c).mkdir(parents=True)
        for i in range(6):
            (w / "not_images" / c / f"{i}.jpg").write_text("this is not a JPEG")
    (w / "no_classes").mkdir()
    (w / "no_classes" / "readme.txt").write_text("no class folders here")
    (w / "recipes").mkdir()
    train(tiny_recipe(w / "data", w / "run", train={"epochs": 1}))
    # a checkpoint whose weights file is cut in half, beside a good one
    bad_run = w / "bad_run"
    train(tiny_recipe(w / "data", bad_run, train={"epochs": 1}))
    weights = next((bad_run / "checkpoints").glob("step-*")) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    torch.manual_seed(0)
    save_file(create_model("blvit_deit_s_t", num_classes=2, img_size=16, **BLVIT).state_dict(),
              str(w / "blvit.safetensors"))  # fmt: skip
    import timm

    torch.save(timm.create_model("resnet10t", num_classes=2).state_dict(), w / "resnet.pth")
    good = w / "vit.pth"
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=2, img_size=16, **TINY_VIT)
    torch.save(vit.state_dict(), good)
    (w / "truncated.pth").write_bytes(good.read_bytes()[:1000])
    (w / "garbage.safetensors").write_bytes(b"\x00" * 64)
    with open(w / "bomb.pth", "wb") as f:
        pickle.dump({"head.weight": _Payload(w / "PWNED")}, f, protocol=2)
    (w / "notes.txt").write_text("hello")
    from PIL import Image

    Image.new("RGB", (20, 12), (200, 30, 30)).save(w / "image.png")
    (w / "not_image.png").write_text("not a PNG")
    recipes = {
        "good": {},
        "kwargs_typo": {"model": {"kwargs": {**TINY_VIT, "embed_dimm": 32}}},
        "blvit_kwargs_typo": {"model": {"name": "blvit_deit_s_t", "kwargs": {**BLVIT, "little_dimm": 8}}},
        "pretrained_resnet": {"model": {"pretrained": str(w / "resnet.pth")}},
        "pretrained_blvit_resnet": {"model": {"name": "blvit_deit_s_t", "kwargs": BLVIT,
                                              "pretrained": str(w / "resnet.pth")}},  # fmt: skip
        "pretrained_bomb": {"model": {"pretrained": str(w / "bomb.pth")}},
        "pretrained_truncated": {"model": {"pretrained": str(w / "truncated.pth")}},
        "teacher_resnet": {"distill": {"teacher": "vit_tiny_patch16_224", "teacher_kwargs": TINY_VIT,
                                       "teacher_checkpoint": str(w / "resnet.pth")}},  # fmt: skip
        "one_class": {"model": {"num_classes": 1}},
        "not_images": {"data": {"root": str(w / "not_images"), "on_bad_image": "error"}},
        "no_classes": {"data": {"root": str(w / "no_classes")}},
        "four_classes": {"data": {"root": str(w / "four"), "holdout_per_class": 1}},
        "resume_bad": {"run": {"output": str(bad_run)}},
    }
    for name, sections in recipes.items():
        _recipe(w, name, **sections)
    (w / "recipes" / "broken.yaml").write_text("model: {name: [unclosed\n")
    (w / "recipes" / "list.yaml").write_text("- a\n- b\n")
    (w / "recipes" / "unknown_key.yaml").write_text("train: {epochz: 1}\n")
    return w


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file()}  # fmt: skip


R, D = "{w}/recipes/", "{w}/data"
VIS = ["{w}/image.png", "--out", "{w}/o.png"]  # visualize's image and output
S_T = ["--model", "blvit_deit_s_t"]
T = "train"
# (row id, argv, exit status, words the one line must hold: what was expected and what came)
CASES: list[tuple[str, list[str], int, list[str]]] = [
    # --- train: recipes
    ("train/recipe missing", [T, R + "nope.yaml"], 2, ["recipe file", "does not exist"]),
    ("train/recipe not YAML", [T, R + "broken.yaml"], 2, ["must be valid YAML", "at line 2"]),
    ("train/recipe a list", [T, R + "list.yaml"], 2, ["must be a mapping of sections", "got list"]),
    ("train/unknown key", [T, R + "unknown_key.yaml"], 2, ["unknown recipe key(s) ['epochz']", "valid keys"]),
    ("train/timm kwargs typo", [T, R + "kwargs_typo.yaml"], 2, ["does not accept", "embed_dimm"]),
    ("train/bLViT kwargs typo", [T, R + "blvit_kwargs_typo.yaml"], 2, ["little_dimm", "valid overrides"]),
    ("train/bad --set", [T, R + "good.yaml", "--set", "optim.lr"], 2, ["section.key=value", "optim.lr"]),
    ("train/--epochs 0", [T, R + "good.yaml", "--epochs", "0"], 2, ["expected an integer >= 1", "'0'"]),
    ("train/num_classes 1", [T, R + "one_class.yaml"], 2, ["model.num_classes", ">= 2", "got 1"]),
    # --- train: data
    ("train/data missing", [T, R + "good.yaml", "--data", "{w}/nope"], 2, ["data folder", "does not exist"]),
    ("train/no class folders", [T, R + "no_classes.yaml"], 2, ["expected class folders", "Couldn't find"]),
    ("train/non-images", [T, R + "not_images.yaml"], 2, ["cannot read image", "not_images"]),
    ("train/class count", [T, R + "four_classes.yaml"], 2, ["4 classes", "model.num_classes is 2"]),
    # --- train: checkpoints
    ("train/pretrained resnet", [T, R + "pretrained_resnet.yaml"], 2, ["the model needs [", "holds [bn1"]),
    ("train/bLViT pretrained resnet", [T, R + "pretrained_blvit_resnet.yaml"], 2, ["fills none", "conv1"]),
    ("train/pretrained pickle bomb", [T, R + "pretrained_bomb.yaml"], 2, ["other than tensors", "bomb.pth"]),
    ("train/pretrained truncated", [T, R + "pretrained_truncated.yaml"], 2, ["could not read", "truncated"]),
    ("train/teacher resnet", [T, R + "teacher_resnet.yaml"], 2, ["fills none", "resnet.pth"]),
    ("train/resume truncated", [T, R + "resume_bad.yaml", "--resume"], 2,
     ["could not read", "model.safetensors"]),
    ("train/no --resume", [T, R + "good.yaml", "--output", "{w}/run"], 2, ["already holds checkpoints"]),
    # --- eval
    ("eval/checkpoint missing", ["eval", "{w}/nope"], 2, ["no checkpoint at", "expected a checkpoint dir"]),
    ("eval/truncated weights", ["eval", "{w}/bad_run", "--data", D], 2,
     ["could not read", "model.safetensors"]),
    ("eval/file without --model", ["eval", "{w}/blvit.safetensors", "--data", D], 2, ["--model NAME"]),
    ("eval/unknown --model", ["eval", "{w}/blvit.safetensors", "--data", D, "--model", "nope"], 2,
     ["routevit classifier", "'nope'"]),
    ("eval/wrong-model file", ["eval", "{w}/resnet.pth", "--data", D, *S_T, *BLVIT_SET], 2,
     ["fills none", "conv1"]),
    ("eval/pickle bomb", ["eval", "{w}/bomb.pth", "--data", D, *S_T], 2,
     ["other than tensors", "weights_only=True"]),
    ("eval/garbage safetensors", ["eval", "{w}/garbage.safetensors", "--data", D, *S_T], 2,
     ["could not read checkpoint", ".safetensors"]),
    ("eval/data missing", ["eval", "{w}/run", "--data", "{w}/nope"], 2, ["folder of class folders", "nope"]),
    ("eval/no class folders", ["eval", "{w}/run", "--data", "{w}/no_classes"], 2,
     ["class folders", "Couldn't"]),
    ("eval/class count", ["eval", "{w}/run", "--data", "{w}/four"], 2, ["[class_0, class_1] (2)", "(4)"]),
    ("eval/class names", ["eval", "{w}/run", "--data", "{w}/not_images", "--workers", "0"], 2,
     ["[class_0, class_1] (2)", "[cat, dog]"]),
    ("eval/--keep-ratio 0", ["eval", "{w}/run", "--keep-ratio", "0"], 2, ["keep ratio in (0, 1]", "'0'"]),
    ("eval/--batch-size 0", ["eval", "{w}/run", "--batch-size", "0"], 2, ["integer >= 1", "'0'"]),
    ("eval/--keep-ratio vanilla", ["eval", "{w}/run", "--keep-ratio", "0.5"], 2, ["needs a routed model"]),
    ("eval/--model with a run", ["eval", "{w}/run", *S_T], 2, ["apply only to weights"]),
    # --- visualize
    ("visualize/checkpoint missing", ["visualize", "{w}/nope", *VIS], 2, ["checkpoint", "does not exist"]),
    ("visualize/truncated", ["visualize", "{w}/bad_run", *VIS], 2, ["could not read", "model.safetensors"]),
    ("visualize/pickle bomb", ["visualize", "{w}/bomb.pth", *VIS, *S_T], 2, ["other than tensors"]),
    ("visualize/wrong-model file", ["visualize", "{w}/resnet.pth", *VIS, *S_T, *BLVIT_SET], 2,
     ["fills none", "conv1"]),
    ("visualize/text as weights", ["visualize", "{w}/notes.txt", *VIS, *S_T], 2,
     ["unsupported checkpoint suffix", ".txt"]),
    ("visualize/unknown --model", ["visualize", "{w}/blvit.safetensors", *VIS, "--model", "nope"], 2,
     ["routevit model name", "'nope'"]),
    ("visualize/image missing", ["visualize", "{w}/run", "{w}/nope.png", "--out", "{w}/o.png"], 2,
     ["image", "does not exist"]),
    ("visualize/not an image", ["visualize", "{w}/run", "{w}/not_image.png", "--out", "{w}/o.png"], 2,
     ["not an image file Pillow can read"]),
    ("visualize/vanilla model", ["visualize", "{w}/run", *VIS], 2, ["no token routing", "VisionTransformer"]),
    ("visualize/--keep-ratio 2", ["visualize", "{w}/run", *VIS, "--keep-ratio", "2"], 2,
     ["keep ratio in (0, 1]", "'2'"]),
    ("visualize/--out folder missing", ["visualize", "{w}/run", "{w}/image.png", "--out", "{w}/no/o.png"],
     2, ["--out", "existing folder"]),
    ("visualize/--cell 1", ["visualize", "{w}/run", *VIS, "--cell", "1"], 2, ["integer >= 2", "'1'"]),
    # --- bench
    ("bench/unknown --model", ["bench", "--model", "nope"], 2, ["unknown model 'nope'", "available models"]),
    ("bench/no pair", ["bench", "--model", "sam_vit_b"], 2, ["no benchmark pair", "available"]),
    ("bench/--keep-ratio 0", ["bench", "--keep-ratio", "0"], 2, ["keep ratio in (0, 1]", "'0'"]),
    ("bench/--sweep 1.5", ["bench", "--sweep", "0.5,1.5"], 2, ["keep ratios in (0, 1]", "'0.5,1.5'"]),
    ("bench/--batch-sizes 0", ["bench", "--batch-sizes", "0"], 2, ["batch sizes must be >= 1", "'0'"]),
    ("bench/--device", ["bench", "--device", "gpu7"], 2, ["cpu, cuda or cuda:N", "'gpu7'"]),
    ("bench/unknown flag", ["bench", "--fast"], 2, ["unrecognized arguments: --fast"]),
    # --- reproduce
    ("reproduce/data missing", ["reproduce", "cifar10", "--data", "{w}/nope", "--out", "{w}/repro"], 2,
     ["CIFAR-10 ImageFolder root", "nope"]),
    ("reproduce/no class folders", ["reproduce", "cifar10", "--data", "{w}/no_classes", "--out", "{w}/repro"],
     2, ["expected class folders", "Couldn't find"]),
    ("reproduce/unknown target", ["reproduce", "imagenet", "--data", D], 2, ["invalid choice", "imagenet"]),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "status", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gets_one_line_and_status_2(world: Path, argv: list[str], status: int, words: list[str],
                                              capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    args = [a.replace("{w}", str(world)) for a in argv]
    if args[0] == "train" and "--output" not in args and "--resume" not in args:
        args += ["--output", str(world / "new_run")]
    before = _snapshot(world)
    capsys.readouterr()
    try:
        got = main(args)
    except SystemExit as exit_:  # argparse
        got = exit_.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert got == status, err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"routevit {args[0]}: error: "), lines[0]
    assert "Traceback" not in err and "\x1b" not in err
    assert "weights_only=False" not in err  # never advises turning the safety off
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert _snapshot(world) == before  # nothing written, nothing lost
    assert not (world / "new_run").exists() and not (world / "PWNED").exists()


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "routevit.cli", *args], env=subprocess_env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def test_the_shell_sees_the_same_status_and_debug_adds_the_traceback(world: Path) -> None:
    bad = _run("eval", str(world / "bad_run"), "--data", str(world / "data"))
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
    assert bad.stderr.startswith("routevit eval: error: could not read checkpoint")
    debug = _run("eval", str(world / "bad_run"), "--data", str(world / "data"), "--debug")
    assert debug.returncode == 2 and "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1] == bad.stderr.strip()
    flag = _run("bench", "--keep-ratio", "0")
    assert flag.returncode == 2 and flag.stderr.count("\n") == 1, flag.stderr


def test_a_failed_run_is_status_1_and_a_signal_128_plus_n(world: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    import routevit.visualize

    def crash(path: object) -> None:
        raise RuntimeError("CUDA error: an illegal memory access was \x1b[1mencountered\x1b[0m\nmore")

    monkeypatch.setattr(routevit.visualize, "read_image", crash)
    args = ["visualize", str(world / "run"), str(world / "image.png"), "--out", str(world / "o.png")]
    assert main(args) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["routevit visualize: failed: RuntimeError: CUDA error: an illegal memory access was "
                     "encountered more (--debug shows the traceback)"]  # fmt: skip

    def terminated(path: object) -> None:
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(routevit.visualize, "read_image", terminated)
    assert main(args) == 128 + signal.SIGTERM
    assert capsys.readouterr().err.strip() == "routevit visualize: stopped by signal 15 (SIGTERM)"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored
    assert not (world / "o.png").exists()
