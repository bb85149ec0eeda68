"""Helpers shared across test folders: run check-model with --json and pick findings, assert a
clean input error, digest a tree, compare JSON reports, read pytester outcomes; build every
cached artifact the tests use at once (before pytest-xdist's workers start)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path


def check_model(cli, model_dir, spec=None, *extra, select: str):
    """Run `check-model --json` in-process; no check may crash. Returns (exit code, JSON)."""
    args = ["check-model", "--model", model_dir, "--select", select, "--json", *extra]
    if spec:
        args[3:3] = ["--apply", spec]
    result = cli(*args)
    assert result.code in (0, 1), result.err
    data = json.loads(result.out)
    assert not [c for c in data["checks"] if c["status"] == "crash"], data["findings"]
    return result.code, data


def found(data, code, severity=None):
    """The findings of one rule (and severity) in a JSON report."""
    return [f for f in data["findings"] if f["code"] == code
            and (severity is None or f["severity"] == severity)]


def assert_clean_input_error(result, *fragments):
    assert result.code == 2, (result.out, result.err)
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1, result.err
    assert lines[0].startswith("loradoctor: error: ")
    assert "Traceback" not in result.err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def tree_digest(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")) if path.is_dir() else [path]:
        if p.is_file():
            h.update(str(p).encode())
            h.update(p.read_bytes())
            h.update(str(p.stat().st_mtime_ns).encode())
    return h.hexdigest()


def comparable(out: str) -> dict:
    """A JSON report without its timings (the one thing two runs may not share)."""
    report = json.loads(out)
    for check in report["checks"]:
        check.pop("duration_s")
    return report


def outcomes(result) -> dict[str, str]:
    """nodeid -> outcome word, from `-rA`'s short summary and `-v` lines."""
    found = {}
    for line in result.outlines:
        for word in ("PASSED", "FAILED", "SKIPPED", "ERROR"):
            if line.startswith("loradoctor::") and f" {word}" in line:
                found[line.split()[0]] = word
    return found


# The modules whose code decides what the cached artifacts hold.
ARTIFACT_SOURCES = ("assets/*.py", "model/numerics/specimens.py", "model/adapter_specimens.py")


def _artifacts_stamp() -> tuple[Path, str]:
    """Where the record of a complete build lives, and the digest of the builders' code."""
    from loradoctor import assets
    package = Path(importlib.util.find_spec("loradoctor").origin).parent
    sources = sorted(path for pattern in ARTIFACT_SOURCES for path in package.glob(pattern))
    digest = hashlib.sha256(b"".join(path.read_bytes() for path in sources)).hexdigest()
    return assets.cache_dir() / "tests-artifacts.json", digest


def cached_artifacts_missing() -> bool:
    """Whether an artifact the tests use may be missing from the cache, known without
    importing torch: no record of a build by today's builders, or a recorded folder gone."""
    path, digest = _artifacts_stamp()
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return True
    return record.get("sources") != digest or not all(
        (Path(folder) / ".complete").exists() for folder in record.get("folders", []))


def build_cached_artifacts() -> None:
    """Build what is missing: the assets, the numerics specimens, the saved-adapter specimens."""
    from loradoctor import assets
    from loradoctor.model import adapter_specimens
    from loradoctor.model.numerics import specimens

    folders = [build() for build in (*assets.BUILDERS.values(), *specimens.SPECIMENS.values())]
    adapter_specimens.specimens()
    folders.append(adapter_specimens.root())
    path, digest = _artifacts_stamp()
    path.write_text(json.dumps({"sources": digest, "folders": [str(f) for f in folders]}))
