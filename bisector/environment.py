"""What differs between the processes of two runs: versions, devices, settings, environment.

A different GPU, library or flag is itself a cause of different numbers, so a report shows
these next to the first source.
"""

from __future__ import annotations

from typing import Any

from bisector.report import EnvironmentRow

# Header entries compared, in the order shown: (section, key, label).
_VERSIONS = ("torch", "cuda", "cudnn", "gpus", "python", "numpy", "cpu", "platform")


def differences(
    header_a: dict[str, Any],
    header_b: dict[str, Any],
    footer_a: dict[str, Any] | None = None,
    footer_b: dict[str, Any] | None = None,
) -> list[EnvironmentRow]:
    """The entries that differ between two trace or digest headers.

    Settings are taken at the end of the run where the footer has them (a script sets its flags
    after start-up); environment variables from the header.

    Returns:
        ``[{"what": "torch", "a": "2.11.0", "b": "2.13.0"}, ...]``: versions and devices
        first, then determinism settings (incl. thread counts), then environment variables.
    """
    found: list[EnvironmentRow] = []
    versions_a, versions_b = header_a.get("versions", {}), header_b.get("versions", {})
    for key in _VERSIONS:
        if key in versions_a or key in versions_b:
            _add(found, key, versions_a.get(key), versions_b.get(key))
    settings_a = dict((footer_a or {}).get("settings_at_end") or header_a.get("settings", {}))
    settings_b = dict((footer_b or {}).get("settings_at_end") or header_b.get("settings", {}))
    env_a, env_b = settings_a.pop("env", {}) or {}, settings_b.pop("env", {}) or {}
    for key in sorted(set(settings_a) | set(settings_b)):
        _add(found, key, settings_a.get(key), settings_b.get(key))
    for key in sorted(set(env_a) | set(env_b)):
        _add(found, f"${key}", env_a.get(key, "(unset)"), env_b.get(key, "(unset)"))
    return found


def _add(found: list, what: str, a: Any, b: Any) -> None:
    if a != b:
        found.append({"what": what, "a": a, "b": b})
