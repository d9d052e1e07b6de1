"""fuse-export: a fused DCNN + Self-Cure Network FER model, trained, exported and verified across runtimes."""

__version__ = "0.1.0"
