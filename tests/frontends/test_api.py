"""The Python API: `loradoctor.check` / `loradoctor.gate` on live objects, against the CLI.

The same pipeline is given once as the CLI takes it (paths and SPECs) and once as a training
script holds it (a tokenizer object, a dataset class, instance or labelling function, records
as a list or a Hugging Face `datasets.Dataset`, a live model: PEFT-wrapped, a base with an
apply function, or adapted by hand). The findings must be the same. The data is MiniMind's
dataset class on the real Qwen3 tokenizer (LD101/LD102: `bos_token` is None) and its fix; the
models are the tiny seeded Qwen3 with a closure-aliased apply function (LD201) and a correct one.
"""

from __future__ import annotations

import json

import pytest

import loradoctor
from loradoctor.inputs.specs import load_spec

from ..conftest import DATA, FIXTURES, PIPELINES

pytestmark = pytest.mark.usefixtures('load_each_tokenizer_once')

PERSONA = DATA / "persona.jsonl"
MINIMIND = PIPELINES / "minimind_dataset.py"
LD102 = FIXTURES / "masking" / "ld102.py"
LD201 = FIXTURES / "lora" / "ld201.py"
MODEL_RULES = "LD2,LD401"  # wiring and the identity start: the checks the apply code decides
PEFT = {"r": 8, "lora_alpha": 16, "target_modules": "all-linear"}


_CLI_RUNS: dict[tuple, tuple[int, list[tuple]]] = {}  # the same CLI run serves several tests


def cli_findings(cli, *args) -> tuple[int, list[tuple]]:
    key = tuple(map(str, args))
    if key not in _CLI_RUNS:
        result = cli(*args, "--json")
        assert result.code in (0, 1), result.err
        data = json.loads(result.out)
        assert not [c for c in data["checks"] if c["status"] == "crash"], data["findings"]
        _CLI_RUNS[key] = (result.code, sorted((f["code"], f["severity"], f["location"],
                                               f["message"]) for f in data["findings"]))
    return _CLI_RUNS[key]


def api_findings(report) -> list[tuple]:
    assert not [r for r in report.results if r.status.value == "crash"], report.findings
    return sorted((f.code, f.severity.value, f.location, f.message) for f in report.findings)


def codes(report) -> set[str]:
    return {f.code for f in report.findings}


def _records() -> list[dict]:
    return [json.loads(line) for line in PERSONA.read_text(encoding="utf-8").splitlines()]


def _token_rows(dataset) -> list[dict]:
    """A dataset instance's items as {"input_ids", "labels"} lists, as a tokenized dataset."""
    rows = []
    for i in range(len(dataset)):
        ids, labels = dataset[i][:2]
        rows.append({"input_ids": ids.tolist(), "labels": labels.tolist()})
    return rows


# --- data: every live form gives the CLI's findings --------------------------------------


@pytest.mark.parametrize("name", ["LoRADataset", "LoRADatasetFixed"])
def test_a_live_tokenizer_and_dataset_class_give_the_clis_findings(cli, qwen3_tokenizer,
                                                                   qwen3_tokenizer_dir, name):
    code, expected = cli_findings(cli, "check-dataset", PERSONA, "--tokenizer",
                                  qwen3_tokenizer_dir, "--dataset", f"{MINIMIND}:{name}")
    report = loradoctor.check(tokenizer=qwen3_tokenizer, data=PERSONA,
                              dataset=load_spec(f"{MINIMIND}:{name}"))
    assert api_findings(report) == expected
    assert report.exit_code == code and report.ok == (code == 0)
    if name == "LoRADataset":
        assert {c for c, *_ in expected} == {"LD101", "LD102"}
    else:
        assert expected == []


def test_a_labelling_function_gives_the_clis_findings(cli, qwen3_tokenizer,
                                                      qwen3_tokenizer_dir):
    _, expected = cli_findings(cli, "check-dataset", PERSONA, "--tokenizer", qwen3_tokenizer_dir,
                               "--dataset", f"{LD102}:bad_function")
    report = loradoctor.check(tokenizer=qwen3_tokenizer, data=PERSONA,
                              dataset=load_spec(f"{LD102}:bad_function"))
    assert api_findings(report) == expected
    assert {c for c, *_ in expected} == {"LD101", "LD102"}


@pytest.mark.parametrize("form", ["list", "hf-dataset"])
def test_records_in_memory_give_the_files_findings_located_by_record(qwen3_tokenizer, form):
    import datasets

    records = _records()
    data = records if form == "list" else datasets.Dataset.from_list(records)
    bad = load_spec(f"{MINIMIND}:LoRADataset")
    on_file = loradoctor.check(tokenizer=qwen3_tokenizer, data=PERSONA, dataset=bad)
    in_memory = loradoctor.check(tokenizer=qwen3_tokenizer, data=data, dataset=bad)
    assert codes(in_memory) == codes(on_file) == {"LD101", "LD102"}
    for a, b in zip(sorted(on_file.findings, key=lambda f: f.code),
                    sorted(in_memory.findings, key=lambda f: f.code)):
        assert (a.severity, a.message, a.evidence) == (b.severity, b.message, b.evidence)
    ld101 = next(f for f in in_memory.findings if f.code == "LD101")
    assert ld101.location == "records:1" and ld101.evidence["lines"] == list(range(1, 25))
    fixed = loradoctor.check(tokenizer=qwen3_tokenizer, data=data,
                             dataset=load_spec(f"{MINIMIND}:LoRADatasetFixed"))
    assert fixed.ok and fixed.findings == []


def test_a_dataset_instance_alone_is_judged_by_its_own_tokens(qwen3_tokenizer):
    bad = load_spec(f"{MINIMIND}:LoRADataset")(qwen3_tokenizer, str(PERSONA))
    report = loradoctor.check(tokenizer=qwen3_tokenizer, dataset=bad)
    assert codes(report) == {"LD101", "LD102"} and not report.ok
    ld101 = next(f for f in report.findings if f.code == "LD101")
    assert ld101.evidence["lines"] == list(range(1, 25))
    assert ld101.location == "LoRADataset[0]"
    assert report.summary["masking"]["samples_by_own_tokens"] == 24
    fixed = load_spec(f"{MINIMIND}:LoRADatasetFixed")(qwen3_tokenizer, str(PERSONA))
    report = loradoctor.check(tokenizer=qwen3_tokenizer, dataset=fixed)
    assert report.ok and report.findings == []


def test_a_hugging_face_dataset_of_token_rows_is_checked_row_by_row(qwen3_tokenizer):
    import datasets

    bad = load_spec(f"{MINIMIND}:LoRADataset")(qwen3_tokenizer, str(PERSONA))
    rows = datasets.Dataset.from_list(_token_rows(bad))
    report = loradoctor.check(tokenizer=qwen3_tokenizer, dataset=rows)
    assert codes(report) == {"LD101"}  # no marker to decode: the rows hold only tokens
    assert next(iter(report.findings)).evidence["count"] == 24
    fixed = load_spec(f"{MINIMIND}:LoRADatasetFixed")(qwen3_tokenizer, str(PERSONA))
    rows = datasets.Dataset.from_list(_token_rows(fixed)).with_format("torch")
    report = loradoctor.check(tokenizer=qwen3_tokenizer, dataset=rows)
    assert report.ok and report.findings == []


# --- the gate ----------------------------------------------------------------------------


def test_the_gate_raises_unhealthy_pipeline_with_the_report_on_the_buggy_class(
        qwen3_tokenizer, capsys):
    with pytest.raises(loradoctor.UnhealthyPipeline) as caught:
        loradoctor.gate(tokenizer=qwen3_tokenizer, data=PERSONA,
                        dataset=load_spec(f"{MINIMIND}:LoRADataset"))
    report = caught.value.report
    assert isinstance(report, loradoctor.Report) and not report.ok
    assert codes(report) == {"LD101", "LD102"}
    message = str(caught.value)
    assert message.startswith("loradoctor found 2 errors in ")
    assert "LD101 no-supervised-tokens" in message and "LD102 marker-from-missing" in message
    assert "fix: " in message
    out, err = capsys.readouterr()
    assert out == ""  # the doctor view goes to stderr, never into the script's stdout
    assert "LD101" in err and "loradoctor gate" in err


def test_the_gate_returns_the_report_on_the_fixed_class_and_quiet_prints_nothing(
        qwen3_tokenizer, capsys):
    report = loradoctor.gate(tokenizer=qwen3_tokenizer, data=PERSONA, quiet=True,
                             dataset=load_spec(f"{MINIMIND}:LoRADatasetFixed"))
    assert isinstance(report, loradoctor.Report) and report.ok and report.findings == []
    with pytest.raises(loradoctor.UnhealthyPipeline):
        loradoctor.gate(tokenizer=qwen3_tokenizer, data=PERSONA, quiet=True,
                        dataset=load_spec(f"{MINIMIND}:LoRADataset"))
    assert capsys.readouterr() == ("", "")


def test_inputs_that_cannot_be_read_raise_input_error_not_a_report(qwen3_tokenizer, tmp_path):
    with pytest.raises(loradoctor.InputError, match="nothing to check"):
        loradoctor.check(tokenizer=qwen3_tokenizer)
    with pytest.raises(loradoctor.InputError, match="no such file"):
        loradoctor.check(tokenizer=qwen3_tokenizer, data=tmp_path / "missing.jsonl")


# --- models: live PEFT, a base with an apply function, a model adapted by hand ----------


@pytest.fixture
def tiny_qwen3(tiny_qwen3_dir):
    """A fresh live model, as a training script loads it."""
    import torch
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(tiny_qwen3_dir, dtype=torch.float32).eval()


@pytest.mark.parametrize("name", ["bad", pytest.param("good", marks=pytest.mark.slow)])
def test_a_live_base_with_an_apply_function_gives_the_clis_findings(cli, tiny_qwen3_dir,
                                                                    tiny_qwen3, name):
    code, expected = cli_findings(cli, "check-model", "--model", tiny_qwen3_dir, "--apply",
                                  f"{LD201}:{name}", "--select", MODEL_RULES)
    report = loradoctor.check(model=tiny_qwen3, apply=load_spec(f"{LD201}:{name}"),
                              select=MODEL_RULES)
    assert api_findings(report) == expected and report.exit_code == code
    assert ("LD201" in {c for c, *_ in expected}) == (name == "bad")
    assert not any(hasattr(m, "lora") for m in tiny_qwen3.modules())  # applied to a copy


@pytest.mark.parametrize("name", ["bad", pytest.param("good", marks=pytest.mark.slow)])
def test_a_model_adapted_by_hand_gives_the_clis_findings(cli, tiny_qwen3_dir, tiny_qwen3,
                                                         name):
    """The closure-aliased forward crashes on the model itself: the base logits must still
    come from the base layers, so LD201 and LD401 judge it as they do from the CLI."""
    code, expected = cli_findings(cli, "check-model", "--model", tiny_qwen3_dir, "--apply",
                                  f"{LD201}:{name}", "--select", MODEL_RULES)
    load_spec(f"{LD201}:{name}")(tiny_qwen3)  # the user's own code adapts their model
    report = loradoctor.check(model=tiny_qwen3, select=MODEL_RULES)
    assert api_findings(report) == expected and report.exit_code == code


@pytest.mark.slow  # the CLI and two live models through every wiring and identity rule
def test_a_live_peft_model_and_a_peft_config_give_the_clis_findings(cli, tiny_qwen3_dir,
                                                                    tiny_qwen3_dir_models):
    from peft import LoraConfig, get_peft_model

    code, expected = cli_findings(cli, "check-model", "--model", tiny_qwen3_dir, "--peft",
                                  "r=8,lora_alpha=16,target_modules=all-linear",
                                  "--select", MODEL_RULES)
    base, other = tiny_qwen3_dir_models
    live = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", **PEFT))
    report = loradoctor.check(model=live, select=MODEL_RULES)
    assert api_findings(report) == expected and report.exit_code == code == 0
    report = loradoctor.check(model=other, peft=LoraConfig(**PEFT), select=MODEL_RULES)
    assert api_findings(report) == expected
    assert not hasattr(other, "peft_config")  # PEFT was applied to a copy


@pytest.fixture
def tiny_qwen3_dir_models(tiny_qwen3_dir):
    import torch
    from transformers import AutoModelForCausalLM
    return [AutoModelForCausalLM.from_pretrained(tiny_qwen3_dir, dtype=torch.float32).eval()
            for _ in range(2)]
