"""Flywheel's domain: plans, the store and the pipeline. Never imports streamlit."""

from __future__ import annotations

__version__ = "0.1.0"
