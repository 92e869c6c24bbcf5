"""A study's grid: which setting wins, and whether the winner sits at an edge of the grid.

A grid setting is a list of Hydra overrides ``KEY=VALUE``. An *axis* of an optimizer's grid is a key that every setting
sets to a number (``optimization.lr=[0.002]`` reads as 0.002) and that takes more than one value across the grid. The
winner is at an edge of an axis when no setting of the grid goes further that way: then the grid cannot tell whether
the best value lies beyond it, and the study's protocol (issue 14, "extend the grid in that direction before seeds")
asks for more runs first. Keys with non-numeric values (``optimizer.sage_params=attn_ffn``) have no direction and are
never axes.
"""

from __future__ import annotations

import math


def override_value(override: str) -> tuple[str, float | None]:
    """``KEY=VALUE`` as (key, the value as a number or None). Hydra's one-element list ``[0.002]`` (fairseq's lr) is
    its element."""
    key, _, text = override.partition("=")
    text = text.strip()
    if text.startswith("[") and text.endswith("]") and "," not in text:
        text = text[1:-1].strip()
    try:
        value = float(text)
    except ValueError:
        return key.strip(), None
    return key.strip(), value if math.isfinite(value) else None


def axes(grid: dict[str, list[str]]) -> dict[str, dict[str, float]]:
    """The grid's numeric axes: {key: {setting: value}} for every key each setting sets to a number, with at least two
    distinct values."""
    values: dict[str, dict[str, float]] = {}
    for setting, overrides in grid.items():
        for override in overrides:
            key, value = override_value(override)
            if value is not None:
                values.setdefault(key, {})[setting] = value
    return {
        key: by_setting
        for key, by_setting in values.items()
        if len(by_setting) == len(grid) and len(set(by_setting.values())) > 1
    }


def edges(grid: dict[str, list[str]], winner: str) -> dict[str, str]:
    """{key: "lowest" | "highest"} for every axis on which ``winner`` has the grid's lowest or highest value."""
    found = {}
    for key, by_setting in axes(grid).items():
        value = by_setting[winner]
        if value == min(by_setting.values()):
            found[key] = "lowest"
        elif value == max(by_setting.values()):
            found[key] = "highest"
    return found


def describe_edges(grid: dict[str, list[str]], winner: str) -> str:
    """One phrase: where the winner stands on each axis (empty for a grid without axes)."""
    parts = []
    found = edges(grid, winner)
    for key, by_setting in axes(grid).items():
        values = ", ".join(f"{v:g}" for v in sorted(set(by_setting.values())))
        where = f"the {found[key]}" if key in found else "inside"
        parts.append(f"{key} {by_setting[winner]:g}: {where} of the grid's {values}")
    return "; ".join(parts)


def winner(scores: dict[str, dict]) -> str | None:
    """The protocol's choice among grid settings ``{setting: {"valid_sacrebleu", "final_valid_loss", ...}}``: the
    highest validation sacreBLEU, ties broken by the lower final validation loss; settings that failed (or have no
    score yet) take no part. None if none has a score."""
    scored = [s for s, g in scores.items() if not g.get("failed") and g.get("valid_sacrebleu") is not None]
    if not scored:
        return None
    return max(scored, key=lambda s: (scores[s]["valid_sacrebleu"], -(scores[s].get("final_valid_loss") or math.inf)))
