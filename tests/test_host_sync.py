"""No host synchronisation in the routed forward passes.

On a GPU, reading a device value on the host (``.item()``, ``bool(t)``, ``int(t)``, ``nonzero``)
waits for every queued kernel, and building a tensor from Python data each call (``torch.tensor``,
indexing with a Python list) is a host-to-device copy. On the CPU nothing waits, but the same
calls are visible as aten ops: a TorchDispatchMode records them, and ``tolist`` (which reads the
data without dispatching) is caught by patching it.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from routevit import create_model
from routevit.layers import TopKDispatcher
from routevit.layers.encoder import Schedule

# Ops that read device memory back to the host, or whose output size depends on the data.
READ_BACK = {"_local_scalar_dense", "item", "is_nonzero", "nonzero", "equal", "allclose", "unique",
             "masked_select", "_unique2"}  # fmt: skip
# Ops that turn Python data into a tensor (the host-to-device copy of torch.tensor(...) or of
# indexing with a list on a GPU).
FROM_HOST = {"lift_fresh", "lift_fresh_copy", "scalar_tensor"}


class HostSyncRecorder(TorchDispatchMode):
    """Records every aten op of :data:`READ_BACK` or :data:`FROM_HOST` run inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in READ_BACK or name in FROM_HOST:
            self.found.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.fixture
def no_host_sync(monkeypatch: pytest.MonkeyPatch):
    """A context manager factory that fails the test on any host read-back or host-data tensor."""
    tolist = torch.Tensor.tolist
    calls: list[str] = []

    def recording_tolist(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        calls.append("Tensor.tolist")
        return tolist(self, *args, **kwargs)

    class Checked:
        def __enter__(self) -> HostSyncRecorder:
            monkeypatch.setattr(torch.Tensor, "tolist", recording_tolist)
            self.mode = HostSyncRecorder()
            self.mode.__enter__()
            return self.mode

        def __exit__(self, *exc: object) -> None:
            self.mode.__exit__(*exc)
            monkeypatch.setattr(torch.Tensor, "tolist", tolist)
            found = self.mode.found + calls
            assert not found, f"host syncs in the forward: {sorted(set(found))}"

    return Checked


def _deit():
    torch.manual_seed(0)
    return create_model("blvit_deit_s_t", img_size=32, patch_size=8, embed_dim=32, num_heads=2,
                        little_dim=16, little_heads=1, depth=4, num_classes=3).eval()  # fmt: skip


def _sam():
    torch.manual_seed(0)
    # a 10x10 grid in 7x7 windows pads to 14x14: padding is masked at every prediction layer
    return create_model("blvit_sam_b_t", img_size=160, window_size=7, depth=3, embed_dim=64,
                        num_heads=4, global_attn_indexes=(2,), out_chans=32, little_dim=32,
                        little_heads=2, schedule=Schedule.big_little_from(3, 2, (1, 2))).eval()  # fmt: skip


def test_the_recorder_sees_what_it_must():
    """The recorder itself: each pattern that syncs on a GPU is seen on the CPU."""
    keep = torch.zeros(5, dtype=torch.bool)
    for pattern in (
        lambda: keep.__setitem__([0], True),  # index with a Python list
        lambda: torch.tensor([1.0, 2.0]),
        lambda: bool(keep.any()),
        lambda: int(torch.arange(3).min()),
        lambda: keep.nonzero(),
    ):
        with HostSyncRecorder() as mode:
            pattern()
        assert mode.found, pattern


def test_deit_forward_has_no_host_sync(no_host_sync):
    model = _deit()
    x = torch.randn(2, 3, 32, 32)
    model(x)  # warm-up outside the check (lazy initialisation is allowed once)
    with torch.no_grad(), no_host_sync():
        model(x)


def test_deit_training_forward_and_backward_have_no_host_sync(no_host_sync):
    model = _deit().train()
    x = torch.randn(2, 3, 32, 32)
    with no_host_sync():
        model(x).square().mean().backward()


def test_sam_forward_has_no_host_sync(no_host_sync):
    model = _sam()
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        model(x)
        with no_host_sync():
            model(x)


def test_dispatcher_with_always_kept_tokens_has_no_host_sync(no_host_sync):
    scores = torch.rand(3, 17).softmax(-1)
    dispatcher = TopKDispatcher(0.25, always_keep=(0, 16))
    with no_host_sync():
        routes = dispatcher(scores)
    assert (routes.indices[:, 0] == 0).all() and (routes.indices[:, -1] == 16).all()


def test_eligibility_check_reads_nothing_back_off_the_cpu():
    """``check_eligible=True`` on a device: the check is queued on the device (an async assert),
    not read back. The meta device holds no data, so any read-back raises there."""
    scores = torch.rand(2, 12, device="meta")
    ineligible = torch.zeros(2, 12, dtype=torch.bool, device="meta")
    routes = TopKDispatcher(0.25, always_keep=(0,), group_size=6)(scores, ineligible)
    assert routes.indices.shape == (2, 4) and routes.indices.device.type == "meta"


def test_eligibility_check_still_raises_on_the_cpu():
    ineligible = torch.zeros(1, 8, dtype=torch.bool)
    ineligible[0, 1:7] = True  # 2 eligible tokens, k = 4
    with pytest.raises(ValueError, match="only 2 eligible tokens but k=4"):
        TopKDispatcher(0.5)(torch.rand(1, 8), ineligible)
    ineligible[0, 0] = True
    with pytest.raises(ValueError, match="always-kept positions"):
        TopKDispatcher(0.25, always_keep=(0,))(torch.rand(1, 8), ineligible)
