"""Loading other projects' checkpoints; one module per project.

``routevit.interop.timm`` does not import timm (checkpoints are plain state dicts), so it is
imported here; timm stays an optional dependency.
"""

from . import timm

__all__ = ["timm"]
