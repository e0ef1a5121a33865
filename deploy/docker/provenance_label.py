"""Print the weights' provenance of an export folder as one line of JSON, for an image LABEL.

    docker build ... --build-arg WEIGHTS_PROVENANCE="$(python deploy/docker/provenance_label.py EXPORT_DIR)"

The value of ``ai.compositor.weights.provenance``: per network, the kind (trained, published,
untrained, unknown), file name and SHA-256 recorded by ``compositor export`` in its
export_report.json (``weights.provenance``); the same records the model repository's
PROVENANCE.md and configs carry. Standard library only, so it runs with any Python.
"""

import json
import sys
from pathlib import Path

FIELDS = ("kind", "file", "sha256")


def provenance_label(export_dir: Path) -> str:
    report_path = export_dir / "export_report.json"
    try:
        report = json.loads(report_path.read_text())
    except (OSError, ValueError) as error:
        raise SystemExit(f"error: cannot read {report_path} ({error}); is {export_dir} a 'compositor export' folder?")
    records = (report.get("weights") or {}).get("provenance") or {}
    if not records:
        raise SystemExit(f"error: {report_path} records no weights provenance; export again with this version")
    label = {name: {field: record.get(field) for field in FIELDS} for name, record in sorted(records.items())}
    return json.dumps(label, separators=(",", ":"), sort_keys=True)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: provenance_label.py EXPORT_DIR")
    print(provenance_label(Path(sys.argv[1])))
