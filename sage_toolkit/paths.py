"""Where the project's own files are: the toolkit is used from a checkout (``pip install -e .``), never from a wheel
without its configs."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"
PLUGIN_DIR = ROOT / "fairseq_plugins"
