"""timm's own paths run routevit models: ``import routevit`` registers them with timm.

timm's ``benchmark.py`` and ``validate.py`` are not in its wheel, so the tests below call what
those scripts call, with the arguments they pass: ``timm.create_model`` (benchmark.py's keyword
set), ``resolve_data_config`` with validate.py's argument dict, ``create_dataset`` +
``create_loader`` + ``timm.utils.accuracy`` (validate.py's loop), ``load_checkpoint`` (its
``--checkpoint``), and ``create_transform`` (what a user's own pipeline calls).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _vit_helpers import single_thread  # noqa: F401 - used by pytestmark

import routevit
from routevit.models.vit import BigLittleViT

timm = pytest.importorskip("timm")
from timm.data import create_dataset, create_loader, create_transform, resolve_data_config  # noqa: E402
from timm.models import load_checkpoint  # noqa: E402
from timm.utils import AverageMeter, accuracy  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "num_heads": 2, "little_dim": 16, "little_heads": 1,
        "depth": 4, "num_classes": 5}  # fmt: skip


def test_every_routevit_model_is_a_timm_model_without_published_weights() -> None:
    assert set(routevit.list_models()) <= set(timm.list_models())
    assert not set(routevit.list_models()) & set(timm.list_models(pretrained=True))
    cfg = timm.models.get_pretrained_cfg("blvit_deit_b_t")
    info = routevit.model_info("blvit_deit_b_t")
    assert cfg.input_size == info.input_size and cfg.mean == info.mean and cfg.std == info.std
    assert cfg.crop_pct == info.crop_pct and cfg.first_conv == "patch_embed.proj" and cfg.classifier == "head"
    assert timm.models.get_pretrained_cfg("blvit_sam_b_t").crop_pct == 1.0
    with pytest.raises(ValueError, match="no published weights"):
        timm.create_model("blvit_deit_b_t", pretrained=True, **TINY)


IMPORT_ORDERS = {
    # importing routevit alone leaves timm (two seconds of imports) alone
    "routevit_first": "import sys, routevit; assert 'timm' not in sys.modules; import timm",
    "timm_first": "import timm, routevit",
    # a model registered later joins timm's registry at once
    "registered_later": "import timm, routevit\nfrom routevit.models import register_model\n"
    "@register_model\ndef blvit_sam_b_t_copy(**kw): return routevit.create_model('blvit_sam_b_t', **kw)\n"
    "assert timm.is_model('blvit_sam_b_t_copy')",
}


@pytest.mark.parametrize("order", sorted(IMPORT_ORDERS))
def test_either_import_order_registers_the_models(order: str) -> None:
    """In a fresh interpreter (a test here would leave the registries changed for the others)."""
    import subprocess
    import sys

    from train_util import subprocess_env

    code = IMPORT_ORDERS[order] + "\nassert timm.is_model('blvit_sam_b_t')"
    run = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]


def test_benchmark_py_model_creation_and_data_config() -> None:
    """benchmark.py: create_model with its keyword set (None values pruned by timm), then
    resolve_data_config(kwargs, model=...) for the input size of the random batch it times."""
    torch.manual_seed(0)
    model_kwargs = {k: v for k, v in TINY.items() if k != "num_classes"}  # --model-kwargs
    model = timm.create_model("blvit_deit_b_t", num_classes=5, in_chans=3, global_pool=None,
                              scriptable=False, drop_rate=None, drop_path_rate=None, drop_block_rate=None,
                              **model_kwargs)  # fmt: skip
    assert type(model) is BigLittleViT and model.num_classes == 5
    data_config = resolve_data_config({}, model=model, use_test_size=True)
    assert data_config["input_size"] == (3, 32, 32)  # the instance's size, not the registered 224
    x = torch.randn((2,) + data_config["input_size"])
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 5)


def test_validate_py_loop_on_an_image_folder(tmp_path: Path) -> None:
    """validate.py: resolve_data_config(vars(args), model=...), create_dataset, create_loader,
    then top-1/top-5 with timm.utils.accuracy; --checkpoint through timm's load_checkpoint."""
    from train_util import make_image_folder

    data = make_image_folder(tmp_path / "val", classes=5, per_class=2, size=40)
    torch.manual_seed(0)
    trained = routevit.create_model("blvit_deit_b_t", **TINY)
    folder = trained.save_pretrained(tmp_path / "blvit", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    model = timm.create_model("blvit_deit_b_t", **TINY)
    load_checkpoint(model, str(folder / "model.safetensors"))  # validate.py --checkpoint
    args = {"input_size": None, "img_size": None, "in_chans": None, "interpolation": "", "mean": None,
            "std": None, "crop_pct": None, "crop_mode": None}  # validate.py's defaults  # fmt: skip
    data_config = resolve_data_config(args, model=model, use_test_size=True)
    dataset = create_dataset(name="", root=str(data), split="validation")
    loader = create_loader(dataset, input_size=data_config["input_size"], batch_size=4, use_prefetcher=False,
                           interpolation=data_config["interpolation"], mean=data_config["mean"],
                           std=data_config["std"], num_workers=0, crop_pct=data_config["crop_pct"],
                           crop_mode=data_config["crop_mode"])  # fmt: skip
    top1, top5, seen = AverageMeter(), AverageMeter(), 0
    model.eval()
    with torch.no_grad():
        for images, target in loader:
            output = model(images)
            torch.testing.assert_close(output, trained.eval()(images))  # the checkpoint's weights
            acc1, acc5 = accuracy(output, target, topk=(1, 5))
            top1.update(acc1.item(), images.size(0))
            top5.update(acc5.item(), images.size(0))
            seen += images.size(0)
    assert seen == 10 and top5.avg == pytest.approx(100.0) and 0 <= top1.avg <= 100


def test_data_config_and_transform_follow_a_saved_folder(tmp_path: Path) -> None:
    """A save_pretrained folder's mean/std reach timm's data config when timm loads it."""
    from PIL import Image

    torch.manual_seed(0)
    source = routevit.create_model("blvit_deit_b_t", **TINY)
    folder = source.save_pretrained(tmp_path / "m", class_names=list("abcde"), mean=(0.5, 0.5, 0.5),
                                    std=(0.25, 0.25, 0.25))  # fmt: skip
    model = timm.create_model("blvit_deit_b_t", pretrained=True, pretrained_cfg_overlay={"file": str(folder)})
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), source.eval()(x))
    config = resolve_data_config(model=model)
    assert config["mean"] == (0.5, 0.5, 0.5) and config["std"] == (0.25, 0.25, 0.25)
    assert model.pretrained_cfg["label_names"] == tuple("abcde")
    transform = create_transform(**config)
    tensor = transform(Image.new("RGB", (50, 40), (255, 0, 0)))
    assert tensor.shape == (3, 32, 32)
    assert tensor[0].mean().item() == pytest.approx((1.0 - 0.5) / 0.25, rel=1e-5)  # red, normalised
