"""A BIDS dataset as a cohort table: its scans found with pybids (``sub-*/[ses-*/]anat/
*_T1w.nii.gz``, filtered by suffix, session, acquisition and run), each given its subject's
values from participants.tsv, and its session's own from that subject's sessions.tsv where they
are there (an age at each visit). The records are then read as a CSV's rows are
(``table.table_of``): one cohort table, two readers. A subject's sessions stay in one split.
"""

from __future__ import annotations

import json
from pathlib import Path

from .table import DataError, Problem, Table, read_records, table_of

SESSION = "session"  # the records' session column (ses-1), kept with each row
MISSING = "n/a"  # how BIDS tables write a value that is not known


def read_bids(data_config, require_label: bool = True, run_dir: str | Path | None = None) -> Table:
    """The dataset at ``data_config.bids_root`` as a cohort table, with what was found and left
    out in ``Table.facts`` (subjects, sessions, scans; subjects without a scan; scans whose
    target is unknown)."""
    root = Path(data_config.bids_root)
    _check_dataset(root)
    participants = _participants(root, data_config, require_label)
    names = data_config.columns
    records, missing = [], []
    for scan in _scans(root, data_config):
        subject = f"sub-{scan.entities['subject']}"
        values = participants.get(subject)
        if values is None:
            missing.append(subject)
            continue
        session = f"ses-{scan.entities['session']}" if "session" in scan.entities else ""
        values = {**values, **_session_values(root, subject, session)}
        records.append({names.image: scan.path, names.subject: subject, SESSION: session,
                        names.label: values.get(names.label, ""), names.target: values.get(names.target, "")})
    if missing:
        raise DataError([Problem(None, f"{subject} has scans but no row in participants.tsv (participant_id)",
                                 str(root / "participants.tsv")) for subject in sorted(set(missing))])
    header = [names.image, names.subject, SESSION, names.label, names.target]
    table = table_of(root / "participants.tsv", header, records, data_config, require_label, run_dir,
                     where="scan")
    scanned = {r[names.subject] for r in records}
    sessions = {(r[names.subject], r[SESSION]) for r in records if r[SESSION]}
    table.facts = {"subjects": len(scanned), "sessions": len(sessions),
                   "subjects_with_sessions": len({subject for subject, _ in sessions}),
                   "scans": len(records), "without_scan": sorted(set(participants) - scanned),
                   "target_unknown": sum(not str(r[names.target]).strip() for r in records)}
    return table


def _check_dataset(root: Path) -> None:
    """A folder pybids can read: dataset_description.json with a Name and a BIDSVersion."""
    description = root / "dataset_description.json"
    if not root.is_dir():
        raise DataError([Problem(None, "the BIDS dataset does not exist (data.bids_root)", str(root.absolute()))])
    if not description.is_file():
        raise DataError([Problem(None, "no dataset_description.json: not the root of a BIDS dataset",
                                 str(root.absolute()))])
    try:
        fields = json.loads(description.read_text())
    except json.JSONDecodeError as e:
        raise DataError([Problem(None, f"dataset_description.json is not JSON ({e})", str(description))]) from None
    lacking = [k for k in ("Name", "BIDSVersion") if not (isinstance(fields, dict) and fields.get(k))]
    if lacking:
        raise DataError([Problem(None, f"dataset_description.json lacks {', '.join(lacking)}, which BIDS requires",
                                 str(description))])


def _participants(root: Path, data_config, require_label: bool) -> dict[str, dict[str, str]]:
    """participants.tsv's rows by participant_id; the label and target columns asked for must be there."""
    path = root / "participants.tsv"
    if not path.is_file():
        raise DataError([Problem(None, "no participants.tsv: labels and targets come from it", str(path))])
    header, rows, _ = read_records(path)
    if "participant_id" not in header:
        raise DataError([Problem(1, f"no 'participant_id' column; the header has: {', '.join(header)}", str(path))])
    names, thresholds = data_config.columns, data_config.class_thresholds
    needed = {"label": require_label and not thresholds,  # else the class comes from the target
              "target": bool(thresholds) or names.target != type(names).model_fields["target"].default}
    for key, column in (("label", names.label), ("target", names.target)):
        if needed[key] and column not in header:
            raise DataError([Problem(1, f"no '{column}' column (data.columns.{key}); the header has: "
                                        f"{', '.join(header)}", str(path))])
    return {row["participant_id"].strip(): _known(row) for row in rows}


def _session_values(root: Path, subject: str, session: str) -> dict[str, str]:
    """A session's own values (age at the visit) from sub-XX/sub-XX_sessions.tsv, if it has one."""
    path = root / subject / f"{subject}_sessions.tsv"
    if not session or not path.is_file():
        return {}
    _, rows, _ = read_records(path)
    return next(({k: v for k, v in _known(row).items() if k != "session_id" and v} for row in rows
                 if row.get("session_id", "").strip() == session), {})


def _known(row: dict) -> dict[str, str]:
    """A BIDS table's row with its missing values ("n/a", as BIDS writes them) empty."""
    return {k: "" if (v or "").strip() == MISSING else (v or "").strip() for k, v in row.items()}


def _scans(root: Path, data_config):
    """The dataset's images matching the filters, found by pybids (no network, no validation
    beyond BIDS naming)."""
    from bids import BIDSLayout  # here: a second of imports only BIDS cohorts need

    filters = {"suffix": data_config.suffix, "extension": [".nii", ".nii.gz"], "datatype": "anat"}
    for key in ("session", "acquisition", "run"):
        value = getattr(data_config, key)
        if value is not None:
            filters[key] = value if key == "run" else str(value)
    layout = BIDSLayout(str(root), validate=False)
    scans = layout.get(return_type="object", **filters)
    if not scans:
        shown = ", ".join(f"{k}={v}" for k, v in filters.items() if k != "extension")
        raise DataError([Problem(None, f"no scans match {shown} (data.suffix, data.session, data.acquisition, "
                                       "data.run)", str(root))])
    return sorted(scans, key=lambda scan: scan.path)
