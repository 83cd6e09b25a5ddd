"""campaignd: a campaign-optimization daemon that runs every campaign as micro-experiments."""

from __future__ import annotations

__version__ = "0.1.0"
