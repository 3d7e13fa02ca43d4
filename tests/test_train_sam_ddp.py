"""DDP for the sam task: find_unused_parameters only when the prompt encoder and mask decoder
train (frozen by default, they give DDP no parameter to wait for; find_unused_parameters costs a
traversal of the autograd graph at every step)."""

from __future__ import annotations

import pytest

pytest.importorskip("segment_anything")
pytest.importorskip("pycocotools")

from test_train_gpu_state import as_rank  # noqa: E402
from test_train_sam import sam_recipe, world  # noqa: E402, F401 - world is a fixture

from routevit.train import engine, recipe_from_dict, train  # noqa: E402


class _Built(Exception):
    """Raised by the fake DDP: the test needs the wrapper's arguments only."""


@pytest.mark.parametrize("train_decoder", [False, True])
def test_sam_finds_unused_parameters_only_when_the_decoder_trains(monkeypatch, world, tmp_path,  # noqa: F811
                                                                  train_decoder) -> None:  # fmt: skip
    events: list = []
    as_rank(monkeypatch, 0, 2, events)

    def stop_after_ddp(module, **kwargs):  # noqa: ANN001, ANN003
        events.append(kwargs)
        raise _Built

    monkeypatch.setattr(engine, "DistributedDataParallel", stop_after_ddp)
    sam = {"train_decoder": train_decoder, "val_annotations": None, "val_images": None}
    recipe = sam_recipe(world, tmp_path / "run", train={"batch_size": 4}, sam=sam)
    with pytest.raises(_Built):
        train(recipe_from_dict(recipe))
    assert [e["find_unused_parameters"] for e in events] == [train_decoder]
