"""`--format github|sarif|json`: the findings where people already look, from the one report.

The MiniMind-style dataset class whose marker is built from `tokenizer.bos_token` (None for
Qwen3) gives two errors: LD101 at the data's lines and LD102 at the user's line 25. Its GitHub
annotations must name those lines; its SARIF log must be valid against the official SARIF 2.1.0
schema (vendored in tests/data/sarif/ with its licence) and say the same; `merge` of its shards
must say what one run says; findings without a file (a module path, a file outside the
repository) stay findings, without a file.
"""

from __future__ import annotations

import json
import re

import pytest

from loradoctor import registry
from loradoctor.findings import CheckResult, Finding, Report, Severity, Status
from loradoctor.render_github import annotations, escape_data
from loradoctor.render_places import Places, repository_root
from loradoctor.render_sarif import sarif_log

from ..conftest import DATA, PIPELINES, ROOT

SCHEMA = ROOT / "tests" / "data" / "sarif" / "sarif-schema-2.1.0.json"
BUGGY = f"{PIPELINES.relative_to(ROOT) / 'minimind_dataset.py'}:LoRADataset"
PERSONA = (DATA / "persona.jsonl").relative_to(ROOT)


@pytest.fixture(autouse=True)
def in_the_repository(monkeypatch):
    """The commands run from the repository's root, as CI runs them; not under GitHub."""
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("GITHUB_WORKSPACE", raising=False)


def validate(log: dict) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    validator = jsonschema.Draft4Validator(schema, format_checker=jsonschema.FormatChecker())
    errors = sorted(validator.iter_errors(log), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors[:10])


def _buggy(cli, qwen3_tokenizer_dir, *extra):
    return cli("check-dataset", PERSONA, "--tokenizer", qwen3_tokenizer_dir, "--dataset", BUGGY,
               *extra)


def _commands(out: str) -> list[tuple[str, dict, str]]:
    """(command, properties, message) of each workflow command line."""
    found = []
    for line in out.splitlines():
        m = re.fullmatch(r"::(\w+) ([^:]*)::(.*)", line)
        assert m, f"not a workflow command: {line!r}"
        props = dict(p.split("=", 1) for p in m[2].split(",")) if m[2] else {}
        found.append((m[1], props, m[3]))
    return found


def test_github_annotations_name_the_data_lines_and_the_users_line_25(cli, qwen3_tokenizer_dir):
    result = _buggy(cli, qwen3_tokenizer_dir, "--format", "github")
    assert result.code == 1  # the exit code is the report's, whatever the format
    (ld101, ld102) = _commands(result.out)
    assert ld101[:2] == ("error", {"file": "fixtures/data/persona.jsonl", "line": "1",
                                   "endLine": "24",
                                   "title": "LD101 no-supervised-tokens"})
    assert ld102[:2] == ("error", {"file": "fixtures/pipelines/minimind_dataset.py",
                                   "line": "25",
                                   "title": "LD102 marker-from-missing-special-token"})
    assert "24 of 24 samples have no supervised token" in ld101[2]
    assert "%0Afix: build the marker from the template's text" in ld102[2]  # its own line
    assert "\n" not in result.out.rstrip("\n").split("\n")[0]


def test_format_json_is_json(cli, qwen3_tokenizer_dir):
    def comparable(out):
        return re.sub(r'"duration_s": [0-9.e-]+', '"duration_s": 0', out)

    as_format = _buggy(cli, qwen3_tokenizer_dir, "--format", "json")
    as_flag = _buggy(cli, qwen3_tokenizer_dir, "--json")
    assert as_format.code == as_flag.code == 1
    assert comparable(as_format.out) == comparable(as_flag.out)
    assert json.loads(as_format.out)["command"] == "check-dataset"


def test_sarif_is_valid_and_places_each_finding(cli, qwen3_tokenizer_dir):
    result = _buggy(cli, qwen3_tokenizer_dir, "--format", "sarif")
    assert result.code == 1
    log = json.loads(result.out)  # stdout holds the log and nothing else
    validate(log)
    (run,) = log["runs"]
    rules = run["tool"]["driver"]["rules"]
    assert [r["id"] for r in rules] == [c["code"] for c in _checks(cli, qwen3_tokenizer_dir)]
    ld101 = next(r for r in rules if r["id"] == "LD101")
    doc = registry.get("LD101").doc
    assert ld101["name"] == "no-supervised-tokens"
    assert ld101["shortDescription"]["text"] == doc.splitlines()[0]
    assert ld101["help"]["markdown"] == doc and "## Why is this bad?" in doc
    assert ld101["defaultConfiguration"]["level"] == "error"
    first, second = run["results"]
    assert (first["ruleId"], second["ruleId"]) == ("LD101", "LD102")
    assert rules[first["ruleIndex"]]["id"] == "LD101"
    assert first["locations"][0]["physicalLocation"] == {
        "artifactLocation": {"uri": "fixtures/data/persona.jsonl", "uriBaseId": "%SRCROOT%"},
        "region": {"startLine": 1, "endLine": 24}}
    assert second["locations"][0]["physicalLocation"] == {
        "artifactLocation": {"uri": "fixtures/pipelines/minimind_dataset.py",
                             "uriBaseId": "%SRCROOT%"},
        "region": {"startLine": 25}}
    assert "\nFix: find assistant spans from the chat template" in first["message"]["text"]
    assert run["originalUriBaseIds"]["%SRCROOT%"]["uri"] == ROOT.as_uri() + "/"
    assert run["invocations"] == [{"executionSuccessful": True, "exitCode": 1}]
    assert run["properties"]["summary"]["errors"] == 2


def _checks(cli, tok):
    return json.loads(_buggy(cli, tok, "--json").out)["checks"]


def test_merged_shards_give_the_annotations_and_sarif_of_one_run(cli, qwen3_tokenizer_dir,
                                                                 tmp_path):
    parts = []
    for i in (1, 2, 3):
        part = tmp_path / f"part{i}.json"
        part.write_text(_buggy(cli, qwen3_tokenizer_dir, "--shard", f"{i}/3", "--json").out)
        parts.append(part)
    one = _buggy(cli, qwen3_tokenizer_dir, "--format", "github")
    merged = cli("merge", *parts, "--format", "github", "--html", tmp_path / "merged.html")
    assert (merged.code, merged.out) == (one.code, one.out)
    page = (tmp_path / "merged.html").read_text(encoding="utf-8")
    assert "merged from 3 shards" in page and page.count('<figure class="tokenview">') == 3
    sarif = cli("merge", *parts, "--format", "sarif")
    log = json.loads(sarif.out)
    validate(log)
    assert [r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
            for r in log["runs"][0]["results"]] == ["fixtures/data/persona.jsonl",
                                                   "fixtures/pipelines/minimind_dataset.py"]


# --- places, from hand-made reports ---------------------------------------------------------


def _report(*findings: Finding) -> Report:
    report = Report("check-model")
    for f in findings:
        report.results.append(CheckResult(f.code, f.name, Status.FAIL, [f]))
    return report


def _finding(code, location, severity=Severity.ERROR, **kw):
    return Finding(code, registry.get(code).name, severity, f"{code} says so, 100% measured",
                   location, kw.pop("evidence", {}), kw.pop("fix", None))


def test_only_files_are_places(tmp_path):
    outside = tmp_path / "adapter"
    outside.mkdir()
    (outside / "adapter_config.json").write_text("{}\n")
    places = Places([PERSONA, outside, f"{PIPELINES / 'minimind_lora.py'}"])
    assert places.of("model.layers.0.self_attn.q_proj") is None
    assert places.of("step 12") is None and places.of(None) is None
    assert places.of("fixtures/data/persona.jsonl:7").path == "fixtures/data/persona.jsonl"
    assert places.of("minimind_lora.py:134").path == "fixtures/pipelines/minimind_lora.py"
    assert places.of("rank 1: persona.jsonl:3") == places.of("fixtures/data/persona.jsonl:3")
    config = places.of("adapter_config.json:r")  # a field of a file outside the repository
    assert (config.path, config.line, config.inside) == (
        (outside / "adapter_config.json").resolve().as_posix(), None, False)
    assert places.of("no_such_file.py:3") is None
    assert repository_root() == ROOT


def test_a_file_the_users_code_imported_is_found_without_being_given():
    from loradoctor.inputs import specs
    specs.load_spec(f"{PIPELINES / 'minimind_lora.py'}:apply_lora")  # as a SPEC loads it
    place = Places([]).of("minimind_lora.py:12")
    assert (place.path, place.line) == ("fixtures/pipelines/minimind_lora.py", 12)


def test_findings_without_a_file_are_annotations_without_one_and_anchored_in_sarif(tmp_path):
    outside = tmp_path / "weights.safetensors"
    outside.write_bytes(b"")
    report = _report(
        _finding("LD201", "model.layers.0.self_attn.q_proj", fix="bind the loop values"),
        _finding("LD402", None, Severity.WARNING),
        _finding("LD002", "LD301", Severity.INFO),
        _finding("LD515", str(outside)),
        _finding("LD101", "fixtures/data/persona.jsonl:3", evidence={"lines": [3, 4, 9]}))
    places = Places([PERSONA])
    lines = annotations(report, places)
    assert lines[0] == ("::error title=LD201 closure-aliased-forward::LD201 says so, 100%25 "
                        "measured%0Aat: model.layers.0.self_attn.q_proj%0Afix: bind the loop "
                        "values")
    assert lines[1].startswith("::warning title=LD402 dead-adapter::")
    assert lines[2].startswith("::notice title=LD002 check-skipped::")
    assert lines[3].startswith("::error title=LD515") and f"at: {outside}" in lines[3]
    assert lines[4].startswith("::error file=fixtures/data/persona.jsonl,line=3,endLine=4,"
                               "title=LD101 ")  # lines 3-4 in a row, then 9: not a span
    log = sarif_log(report, places, "0.0.0")
    validate(log)
    results = log["runs"][0]["results"]
    # GitHub code scanning rejects a whole SARIF file when one result has no file: a finding
    # without one is anchored at the run's own file (here its data), its place kept in the text.
    anchored = [r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
                for r in results[:3]]
    assert anchored == ["fixtures/data/persona.jsonl"] * 3
    assert results[0]["message"]["text"].startswith("LD201 says so, 100% measured (at model.")
    assert results[0]["properties"]["location"] == "model.layers.0.self_attn.q_proj"
    assert [r["level"] for r in results[:3]] == ["error", "warning", "note"]
    assert results[3]["locations"][0]["physicalLocation"]["artifactLocation"] == {
        "uri": outside.resolve().as_uri()}
    assert results[4]["locations"][0]["physicalLocation"]["region"] == {"startLine": 3,
                                                                        "endLine": 4}


def test_a_model_check_anchors_its_findings_at_the_users_apply_code():
    places = Places([PIPELINES / "minimind_lora.py", ROOT / "fixtures" / "lora"])
    assert places.fallback().path == "fixtures/pipelines/minimind_lora.py"
    assert Places([]).fallback().path == "pyproject.toml"


def test_a_workflow_commands_text_is_escaped():
    assert escape_data("50% of\r\nlines") == "50%25 of%0D%0Alines"
    report = _report(_finding("LD101", "fixtures/data/persona.jsonl:1"))
    report.results[0].findings[0].name = "a,b:c"
    (line,) = annotations(report, Places([PERSONA]))
    assert "title=LD101 a%2Cb%3Ac::" in line


def test_a_run_with_no_finding_is_an_empty_annotation_list_and_a_valid_log():
    report = Report("check-dataset", [CheckResult("LD101", "no-supervised-tokens",
                                                  Status.PASS)])
    assert annotations(report, Places()) == []
    log = sarif_log(report, Places(), "0.0.0")
    validate(log)
    assert log["runs"][0]["results"] == [] and log["runs"][0]["tool"]["driver"]["rules"]


# --- every command, through the real process -------------------------------------------------


@pytest.mark.slow
def test_check_model_and_check_adapter_write_both_formats_and_stdout_holds_only_them(
        cli, cli_subprocess, tiny_qwen3_dir, tmp_path):
    from loradoctor.model.adapter_specimens import specimens
    rank_mismatch = specimens(tiny_qwen3_dir)["rank_mismatch"]
    runs = {
        "check-model": ["check-model", "--model", tiny_qwen3_dir, "--apply",
                        f"{PIPELINES / 'minimind_lora.py'}:apply_lora", "--apply-arg", "rank=8",
                        "--apply-arg", "alpha=16", "--select", "LD201"],
        "check-adapter": ["check-adapter", rank_mismatch, "--model", tiny_qwen3_dir,
                          "--select", "LD513"],
    }
    # Each command's stdout is read from a real process once, in one format each (what else a
    # process might print does not depend on the format); the other format runs in-process.
    for command, args in runs.items():
        github_run, sarif_run = ((cli_subprocess, cli) if command == "check-model"
                                 else (cli, cli_subprocess))
        github = github_run(*args, "--format", "github")
        assert github.code == 1, github.err
        commands = _commands(github.out)
        assert commands and all(c == "error" and "file" not in p for c, p, _ in commands)
        sarif = sarif_run(*args, "--format", "sarif")
        assert sarif.code == 1
        log = json.loads(sarif.out)
        validate(log)
        assert log["runs"][0]["properties"]["command"] == command
        assert {r["ruleId"] for r in log["runs"][0]["results"]} == {args[-1]}


def test_every_command_line_that_prints_a_report_takes_the_output_options(capsys):
    from loradoctor import cli
    from loradoctor.integrations import ray

    parser = cli.build_parser()
    for argv in (["check-dataset", "d.jsonl", "--tokenizer", "t"], ["check-model", "--model", "m"],
                 ["check-adapter", "a", "--model", "m"], ["merge", "p.json"]):
        assert parser.parse_args([*argv, "--json"]).format == "json"
        args = parser.parse_args([*argv, "--format", "sarif", "--html", "r.html"])
        assert (args.format, args.html) == ("sarif", "r.html")
        assert parser.parse_args(argv).format == "text"
    assert parser.parse_args(["reference", "--html", "r.html"]).html == "r.html"
    with pytest.raises(SystemExit):  # the reference runs have no file to annotate
        parser.parse_args(["reference", "--format", "github"])
    with pytest.raises(SystemExit):
        ray.main(["--shards", "2", "check-dataset", "--help"])
    text = capsys.readouterr().out
    assert "--format {text,json,github,sarif}" in text and "--html PATH" in text
