"""Where the project's own files are, in a checkout (``make setup``: ``pip install -e .``) and in an installed package
(``pip install .``): the experiment configs and the fairseq plugin folder (``--user-dir``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
ROOT = PACKAGE.parent  # the checkout (for an installed package: the folder it is installed in)
# The Hydra configs: the checkout's configs/, or the copy pyproject.toml ships inside the installed package.
CONFIG_DIR = PACKAGE / "configs" if (PACKAGE / "configs").is_dir() else ROOT / "configs"
# The plugin package wherever Python imports it from (found, not imported: importing it loads torch).
PLUGIN_DIR = Path(importlib.util.find_spec("fairseq_plugins").submodule_search_locations[0]).resolve()


def user_dir_overrides() -> list[str]:
    """The Hydra override a training needs for its ``--user-dir``: none where the configs' own
    ``common.user_dir`` (their folder's ``../fairseq_plugins``, see configs/base.yaml) is the plugin, as in a checkout;
    the plugin folder otherwise (the configs inside an installed package)."""
    if (CONFIG_DIR.parent / "fairseq_plugins").resolve() == PLUGIN_DIR:
        return []
    return [f"common.user_dir={PLUGIN_DIR}"]
