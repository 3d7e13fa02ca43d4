"""Loading other projects' checkpoints; one module per project."""
