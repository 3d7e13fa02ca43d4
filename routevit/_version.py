"""The routevit version (read by routevit.__version__ and written into save_pretrained folders)."""

__version__ = "0.1.0"
