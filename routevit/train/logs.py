"""Run outputs a person or a tool reads: JSON-lines metrics, TensorBoard (if installed), progress.

Only rank 0 writes; the other ranks get disabled instances.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger("routevit.train")


class MetricsLog:
    """Appends one JSON object per line to ``path`` (flushed each line, so a killed run keeps
    everything logged so far); mirrors scalars to TensorBoard when it is installed."""

    def __init__(self, path: Path | None, tensorboard_dir: Path | None = None) -> None:
        self.path = path
        self._tb = None
        if path is not None and tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                pass
            else:
                self._tb = SummaryWriter(str(tensorboard_dir))

    def write(self, event: str, step: int, **values: Any) -> None:
        if self.path is None:
            return
        record = {"event": event, "step": step, "time": round(time.time(), 3), **values}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(f"{event}/{k}", v, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


class Progress:
    """A tqdm bar per epoch on a terminal; otherwise a plain log line every ``every`` steps."""

    def __init__(
        self, enabled: bool, mode: str, total: int, epoch: int, every: int, initial: int = 0
    ) -> None:
        self.enabled = enabled
        self.every = every
        self.epoch = epoch
        self.total = total
        self._bar = None
        use_bar = mode == "bar" or (mode == "auto" and sys.stderr.isatty())
        if enabled and use_bar:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total, initial=initial, desc=f"epoch {epoch}", dynamic_ncols=True, leave=False
            )

    def update(self, batch_in_epoch: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()}, refresh=False)
        elif batch_in_epoch % self.every == 0 or batch_in_epoch == self.total:
            text = " ".join(f"{k} {v:.4g}" for k, v in values.items())
            logger.info("epoch %d [%d/%d] %s", self.epoch, batch_in_epoch, self.total, text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
