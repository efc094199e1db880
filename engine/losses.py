"""`engine.losses`, the public name of the pure losses, which live in engine/methods/losses.py (see docs/methods/)."""

from engine.methods.losses import *  # noqa: F401, F403
