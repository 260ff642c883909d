"""agegender: train, evaluate and explain multitask age/gender face models."""

__version__ = "0.1.0"
