"""What ``hltemu derive-jec`` corrections were derived with, and how a run differs from it.

The record (``<era>_derivation.json`` beside the CMS text files, and the description of the
correctionlib JSON) holds the jet radius, the rho definition, topoclustering's noise mode and
the pileups of the inputs; :func:`mismatches` compares a run's settings with it (the ``jec``
stage's plan notes).
"""

from __future__ import annotations

import json
from typing import Any

from hltemu.jec.errors import JecError

#: Settings of topoclustering that change the jets' response and offset: corrections derived
#: with one value do not close with another.
NOISE_MODE_KEYS = ("seed_threshold", "grow_threshold", "perimeter_threshold",
                   "subtract_pileup_mean", "pileup_offset", "rho_per_interaction",
                   "rho_zero_pileup", "pileup_noise")
RECORD_FORMAT = "hltemu-jec-derivation/2"
#: Formats whose R, rho and noise settings :func:`mismatches` reads (/2: the L1 fit anchored at
#: pileup 0, three parameters a, b, rho0 instead of p0, p1, p2; the rest is unchanged).
READABLE_FORMATS = ("hltemu-jec-derivation/1", RECORD_FORMAT)


def noise_mode(topocluster: dict[str, Any] | None) -> dict[str, Any]:
    """The :data:`NOISE_MODE_KEYS` of a topocluster config (a dict), those it has."""
    return {k: topocluster[k] for k in NOISE_MODE_KEYS if topocluster and k in topocluster}


def derivation_record(entry: str) -> dict[str, Any] | None:
    """What the correction file of a ``[jec] levels`` entry was derived with, or ``None`` when
    it does not say: ``<era>_derivation.json`` beside a ``<era>_<Level>_<algo>.txt`` written by
    ``derive-jec``, or the description of a correctionlib JSON file it wrote."""
    from hltemu.jec.chain import _entry_path, _is_json
    from hltemu.jec.cms_text import KNOWN_LEVELS

    spec = entry.partition("#")[0]
    try:
        path = _entry_path(spec)
        if _is_json(path):
            import gzip

            raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
            rec = json.loads(json.loads(raw).get("description") or "null")
        else:
            era = next((path.name.split(f"_{lv}_")[0] for lv in KNOWN_LEVELS
                        if f"_{lv}_" in path.name), None)
            side = path.with_name(f"{era}_derivation.json") if era else None
            rec = json.loads(side.read_text()) if side is not None and side.is_file() else None
    except (OSError, ValueError, JecError):
        return None
    return rec if isinstance(rec, dict) and rec.get("format") in READABLE_FORMATS else None


def mismatches(record: dict[str, Any], radius: float | None, rho: dict[str, Any] | None,
               topocluster: dict[str, Any] | None, pileup_mu: float | None) -> list[str]:
    """How a run differs from what corrections were derived with (empty: it does not), each
    as a phrase: jet radius, rho definition, noise mode, pileup outside the derived range."""
    out = []
    corrected = str(record.get("jets") or "jets").split()[0]
    if corrected != "jets":  # the jec stage corrects the calorimeter jets
        out.append(f"{corrected}, not the calorimeter jets that stage jec corrects")
    if radius is not None and record.get("R") is not None and float(record["R"]) != radius:
        out.append(f"jets of R = {record['R']:g}, this run's are R = {radius:g}")
    if rho is not None and record.get("rho"):
        keys = [k for k in record["rho"] if k in rho]
        if any(record["rho"][k] != rho[k] for k in keys):
            out.append(f"rho {dict(record['rho'])}, this run's is { {k: rho[k] for k in keys} }")
    derived, ours = record.get("noise_mode") or {}, noise_mode(topocluster)
    differ = {k: (derived[k], ours[k]) for k in derived if k in ours and derived[k] != ours[k]}
    if differ:
        out.append("topocluster " + ", ".join(f"{k} = {a!r} (this run: {b!r})"
                                              for k, (a, b) in differ.items()))
    pileups = record.get("pileups") or []
    if pileup_mu is not None and pileups and not min(pileups) <= pileup_mu <= max(pileups):
        out.append(f"pileup {min(pileups):g}-{max(pileups):g}, this run's <mu> is "
                   f"{pileup_mu:g} (extrapolated)")
    return out
