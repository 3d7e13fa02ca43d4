"""Loading other projects' checkpoints; one module per project, one reader for all (``weights``).

Interop depends on :mod:`routevit.models`, never the reverse: importing it registers the weights
loaders that the model factories' ``pretrained=`` use. Neither timm nor segment_anything is
imported here (checkpoints are plain state dicts); they stay optional.
"""

from . import sam, timm, weights
from .sam import build_sam
from .weights import read_state_dict

__all__ = ["build_sam", "read_state_dict", "sam", "timm", "weights"]
