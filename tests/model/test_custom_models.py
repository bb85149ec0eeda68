"""check-model and check-dataset on the user's own causal LM: `--model file.py:NAME`.

The two fixtures are the hand-written models hand-written LoRA is most often applied to: a
MiniMind-style `PreTrainedModel` (its own config class, a `model_type` transformers does not
know, HF-style output) saved with `save_pretrained`, and a nanoGPT-style GPT (`forward(idx,
targets) -> (logits, loss)`, no shift, -1 ignored). Through the real CLI: the closure bug is
LD201 on both and the fixes are clean; the identity start, gradient and numerics figures are
checked against the same numbers computed by hand; the header names the measured convention.
Through the API: a live module, and a SPEC with its arguments.
"""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest
import torch

import loradoctor

from ..conftest import FIXTURES, PIPELINES
from ..helpers import check_model, found
from ..helpers import outcomes

pytestmark = pytest.mark.usefixtures('modules_imported_once')

pytest_plugins = ["pytester"]

MODELS = FIXTURES / "models"
NANOGPT = f"{MODELS / 'nanogpt_style.py'}:GPT"
MINIMIND = f"{MODELS / 'minimind_style.py'}:MiniMindForCausalLM"
LORA = PIPELINES / "minimind_lora.py"
MASKING = FIXTURES / "masking"
MULTITURN = MASKING / "multiturn.jsonl"
LORA_ARGS = ("--apply-arg", "rank=4", "--apply-arg", "alpha=8")
NANOGPT_HEADER = ("loss convention: returns (logits, loss), does not shift labels (targets are "
                  "the next tokens), ignores -1, last-position logits without labels")


def _module(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gpt_code():
    return _module(MODELS / "nanogpt_style.py", "fixture_nanogpt_style")


@pytest.fixture(scope="module")
def lora_code():
    return _module(LORA, "fixture_minimind_lora")


@pytest.fixture(scope="module")
def minimind_dir(tmp_path_factory):
    """A tiny MiniMind-style model saved with save_pretrained: AutoModel cannot load it."""
    code = _module(MODELS / "minimind_style.py", "fixture_minimind_style")
    out = tmp_path_factory.mktemp("minimind")
    code.tiny_minimind(seed=0).save_pretrained(out)
    return out


def _spec(style, minimind_dir):
    """--model and --model-arg for one style."""
    if style == "nanogpt":
        return NANOGPT, ()
    return MINIMIND, ("--model-arg", f"path={minimind_dir}")


def _probe_ids(vocab, length):
    """The CLI's probe batch for a model without a tokenizer: random ids under seed 0."""
    return torch.randint(0, vocab, (4, length), generator=torch.Generator().manual_seed(0))


# --- LD201 on both styles, the fixes clean ----------------------------------------------------


@pytest.mark.parametrize("style", ["nanogpt", "minimind"])
def test_the_closure_bug_is_an_ld201_error_on_a_hand_written_model(cli, minimind_dir, style):
    model, args = _spec(style, minimind_dir)
    code, data = check_model(cli, model, f"{LORA}:apply_lora", *args, *LORA_ARGS,
                             select="LD2,LD401")
    assert code == 1
    aliased = found(data, "LD201", "error")
    last = {"nanogpt": "transformer.h.1.mlp.c_proj", "minimind": "model.layers.1.mlp.down_proj"}
    assert aliased and all(f["evidence"]["forward_of"] == last[style] for f in aliased[:-1])
    (ld401,) = found(data, "LD401")
    assert "caused by closure aliasing (LD201)" in ld401["message"]


FIXED = ["apply_lora_default_args", "apply_lora_factory", "apply_lora_partial",
         "apply_lora_wrapper"]


@pytest.mark.parametrize("fix", FIXED)
@pytest.mark.parametrize("style", ["nanogpt", "minimind"])
def test_every_fixed_apply_lora_wires_cleanly_on_a_hand_written_model(cli, minimind_dir, style,
                                                                      fix):
    model, args = _spec(style, minimind_dir)
    code, data = check_model(cli, model, f"{LORA}:{fix}", *args, *LORA_ARGS, select="LD2,LD4")
    assert code == 0, [f["message"] for f in data["findings"] if f["severity"] == "error"]
    assert data["summary"]["init_max_abs_logit_diff"] == 0.0


def test_peft_on_the_nanogpt_style_model_is_wrapped_without_transformers_keywords(cli):
    code, data = check_model(cli, NANOGPT, None, "--peft",
                             "r=4,lora_alpha=8,target_modules=c_attn,c_proj,c_fc",
                             select="LD2,LD4,LD5")
    assert code == 0, [f["message"] for f in data["findings"] if f["severity"] == "error"]
    assert data["summary"]["adapters"] == 8


# --- the figures agree with a hand check ------------------------------------------------------


def test_nanogpt_every_rule_runs_and_its_figures_are_the_hand_computed_ones(cli, gpt_code):
    code, data = check_model(cli, NANOGPT, f"{LORA}:apply_lora_factory", *LORA_ARGS,
                             "--train-steps", "2", select="LD")
    assert code == 0, [f["message"] for f in data["findings"] if f["severity"] != "info"]
    assert {c["status"] for c in data["checks"]} <= {"pass", "skip"}
    assert not [c for c in data["checks"] if c["status"] == "skip" and c["code"] != "LD205"]
    conv = data["summary"]["loss_convention"]
    assert conv["description"] == NANOGPT_HEADER.removeprefix("loss convention: ")
    # By hand: the same seeded GPT, the same probe (block_size 64 cuts it to 64 tokens), the
    # targets are the next tokens with -1 at the end. B = 0, so the adapted loss is the base's.
    model = gpt_code.tiny_gpt(seed=0).eval()
    ids = _probe_ids(256, 64)
    targets = torch.cat([ids[:, 1:], torch.full((4, 1), -1)], dim=1)
    with torch.no_grad():
        _, loss = model(ids, targets)
    numerics = data["summary"]["numerics"]["dtypes"]
    assert numerics["fp32"]["loss"] == pytest.approx(float(loss), rel=1e-6)
    assert data["summary"]["train_losses"][0] == pytest.approx(float(loss), rel=1e-6)
    assert data["summary"]["init_max_abs_logit_diff"] == 0.0
    ld404 = next(c for c in data["checks"] if c["code"] == "LD404")
    assert ld404["summary"].startswith("B got a gradient in 8 of 8 adapters")
    # Read the HF way (aligned labels, shifted inside) the loss would be the copy task's.
    with torch.no_grad():
        copy_loss = model(ids, ids)[1]
    assert abs(float(copy_loss) - numerics["fp32"]["loss"]) > 0.1


def test_minimind_every_rule_runs_and_its_figures_are_the_hand_computed_ones(cli, minimind_dir):
    from transformers import PreTrainedModel

    code, data = check_model(cli, MINIMIND, f"{LORA}:apply_lora_default_args", "--model-arg",
                             f"path={minimind_dir}", *LORA_ARGS, select="LD")
    assert code == 0, [f["message"] for f in data["findings"] if f["severity"] != "info"]
    assert data["summary"]["loss_convention"]["description"] == \
        "HF-style output, shifts labels itself, ignores -100"
    code_ = _module(MODELS / "minimind_style.py", "fixture_minimind_style_hand")
    model = code_.MiniMindForCausalLM.from_pretrained(minimind_dir).eval()
    assert isinstance(model, PreTrainedModel)
    ids = _probe_ids(256, 128)
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss
    assert data["summary"]["numerics"]["dtypes"]["fp32"]["loss"] == \
        pytest.approx(float(loss), rel=1e-6)


def test_the_gradient_and_identity_figures_of_a_live_gpt_match_a_hand_backward(gpt_code,
                                                                               lora_code):
    model = gpt_code.tiny_gpt(seed=0)
    torch.manual_seed(1)
    lora_code.apply_lora_factory(model, rank=4, alpha=8)
    adapters = [m.lora for m in model.modules() if hasattr(m, "lora")]
    for a in adapters:  # a start that is not an identity, so LD401 has a number to report
        torch.nn.init.normal_(a.B.weight, std=0.02)
    report = loradoctor.check(model=model, select="LD401,LD404")
    # By hand: logits of every position with and without the adapters' B, then one backward.
    ids = _probe_ids(256, 64)
    targets = torch.cat([ids[:, 1:], torch.full((4, 1), -1)], dim=1)
    with torch.no_grad():
        adapted = model(ids, targets)[0]
        saved = [a.B.weight.detach().clone() for a in adapters]
        for a in adapters:
            a.B.weight.zero_()
        base = model(ids, targets)[0]
        for a, w in zip(adapters, saved):
            a.B.weight.copy_(w)
    (ld401,) = [f for f in report.findings if f.code == "LD401"]
    assert ld401.evidence["max_abs_diff"] == pytest.approx(float((adapted - base).abs().max()),
                                                           rel=1e-5)
    model.train()
    _, loss = model(ids, targets)
    loss.backward()
    b_max = max(float(a.B.weight.grad.abs().max()) for a in adapters)
    ld404 = next(r for r in report.results if r.code == "LD404")
    assert f"B got a gradient in 8 of 8 adapters (max {b_max:.2g})" in ld404.summary


# --- the header, the API, input errors ---------------------------------------------------------


def test_the_report_header_names_the_measured_convention(cli):
    result = cli("check-model", "--model", NANOGPT, "--apply", f"{LORA}:apply_lora_factory",
                 *LORA_ARGS, "--select", "LD201")
    assert result.code == 0
    head = " ".join(result.out.split("\n\n")[0].split())  # the title, unwrapped
    assert head.startswith(f"loradoctor check-model · {NANOGPT} · {LORA}:apply_lora_factory · "
                           f"{NANOGPT_HEADER}")


def test_check_takes_a_live_module_and_a_model_spec_with_its_arguments(gpt_code, lora_code):
    base = gpt_code.tiny_gpt(seed=0)
    report = loradoctor.check(model=base, apply=lora_code.apply_lora, apply_args={"rank": 4},
                              select="LD201")
    assert not report.ok and {f.code for f in report.errors} == {"LD201"}
    report = loradoctor.check(model=f"{MODELS / 'nanogpt_style.py'}:tiny_gpt",
                              model_args={"n_layer": 1}, apply=lora_code.apply_lora_partial,
                              apply_args={"rank": 4}, select="LD2,LD401")
    assert report.ok
    assert report.summary["adapters"] == 4  # one block: c_attn, c_proj, c_fc, mlp.c_proj
    assert report.summary["loss_convention"]["ignore_index"] == -1


def test_a_live_gpt_adapted_with_the_closure_bug_is_measured_on_its_base(gpt_code, lora_code):
    model = gpt_code.tiny_gpt(seed=0)
    lora_code.apply_lora(model, rank=4, alpha=8)  # its own forward now crashes
    report = loradoctor.check(model=model, select="LD201,LD401")
    conv = report.summary["loss_convention"]
    assert conv["measured"] and conv["labels_arg"] == "targets" and conv["ignore_index"] == -1
    assert {f.code for f in report.errors} == {"LD201", "LD401"}


def test_the_pytest_plugin_checks_the_model_named_in_pyproject(pytester):
    shutil.copy(MODELS / "nanogpt_style.py", pytester.path / "gpt.py")
    shutil.copy(LORA, pytester.path / "lora.py")
    table = ('[tool.loradoctor]\nmodel = "gpt.py:GPT"\nmodel-args = {{ n_layer = 1 }}\n'
             'apply = "lora.py:{}"\napply-args = {{ rank = 4 }}\nselect = ["LD201"]\n')
    pytester.makefile(".toml", pyproject=table.format("apply_lora"))
    result = pytester.runpytest("--loradoctor", "-v", "-p", "no:cacheprovider")
    assert result.ret == 1
    assert outcomes(result) == {"loradoctor::LD201::closure-aliased-forward": "FAILED"}
    pytester.makefile(".toml", pyproject=table.format("apply_lora_factory"))
    result = pytester.runpytest("--loradoctor", "-v", "-p", "no:cacheprovider")
    assert result.ret == 0
    assert outcomes(result) == {"loradoctor::LD201::closure-aliased-forward": "PASSED"}


@pytest.mark.parametrize("args,message", [
    (("--model", f"{MODELS / 'nanogpt_style.py'}:NoSuchName"), "has no attribute 'NoSuchName'"),
    (("--model", NANOGPT, "--model-arg", "n_layers=2"),
     "got an unexpected keyword argument 'n_layers'"),
    (("--model", f"{MODELS / 'nanogpt_style.py'}:GPTConfig"),
     "GPTConfig is a class that is not an nn.Module"),
], ids=["missing-name", "wrong-argument", "not-a-module"])
def test_a_model_spec_that_cannot_be_built_is_one_line_and_exit_2(cli, args, message):
    result = cli("check-model", *args, "--select", "LD201")
    assert result.code == 2 and message in result.err, result.err
    assert len(result.err.strip().splitlines()) == 1


def test_a_directory_of_an_unknown_architecture_says_how_to_pass_its_class(cli, minimind_dir):
    result = cli("check-model", "--model", minimind_dir)
    assert result.code == 2
    assert "model_type 'minimind' is your own architecture: pass its class" in result.err
    result = cli("check-model", "--model", minimind_dir, "--model-arg", "x=1")
    assert result.code == 2 and "--model-arg: model arguments are for a model SPEC" in result.err


# --- check-dataset --model ----------------------------------------------------------------------


def _dataset(cli, tokenizer, spec, *extra):
    result = cli("check-dataset", MULTITURN, "--tokenizer", tokenizer, "--dataset",
                 f"{MASKING / spec}", "--json", *extra)
    assert result.code in (0, 1), result.err
    report = json.loads(result.out)
    assert not [f for f in report["findings"] if f["code"] == "LD001"], report["findings"]
    return result.code, report


def test_for_the_nanogpt_style_model_unshifted_and_minus_100_labels_are_errors(
        cli, qwen3_tokenizer_dir):
    code, report = _dataset(cli, qwen3_tokenizer_dir, "ld116.py:bad", "--model", NANOGPT)
    assert code == 1 and [f["code"] for f in report["findings"]] == ["LD116"]
    (f,) = report["findings"]
    assert f["evidence"]["count"] == f["evidence"]["judged"] == 8
    assert "it is trained to predict the token it is reading" in f["message"]
    code, report = _dataset(cli, qwen3_tokenizer_dir, "ld117.py:bad", "--model", NANOGPT)
    assert code == 1 and [f["code"] for f in report["findings"]] == ["LD117"]
    assert report["findings"][0]["evidence"]["value"] == -100
    assert report["findings"][0]["evidence"]["ignore_index"] == -1
    # Pre-shifted targets masked with -1: clean, LD106 passes the hand shift.
    code, report = _dataset(cli, qwen3_tokenizer_dir, "ld117.py:good", "--model", NANOGPT)
    assert code == 0 and not report["findings"], report["findings"]
    status = {c["code"]: (c["status"], c["summary"]) for c in report["checks"]}
    assert status["LD106"][0] == "pass" and "8 of 8 samples shift labels by hand" in \
        status["LD106"][1]
    assert report["summary"]["loss_convention"]["shifts"] is False


def test_for_the_minimind_style_model_the_labels_are_judged_the_hf_way(cli, qwen3_tokenizer_dir,
                                                                     minimind_dir):
    args = ("--model", MINIMIND, "--model-arg", f"path={minimind_dir}")
    code, report = _dataset(cli, qwen3_tokenizer_dir, "ld106.py:bad", *args)
    assert code == 1 and [f["code"] for f in report["findings"]] == ["LD106"]
    code, report = _dataset(cli, qwen3_tokenizer_dir, "ld106.py:good", *args)
    assert code == 0 and not report["findings"]
    ld116 = next(c for c in report["checks"] if c["code"] == "LD116")
    assert ld116["status"] == "skip" and "shifts labels itself (measured)" in ld116["summary"]


def test_a_model_directory_is_measured_too(cli, qwen3_tokenizer_dir, tiny_qwen3_dir):
    code, report = _dataset(cli, qwen3_tokenizer_dir, "ld106.py:bad", "--model", tiny_qwen3_dir)
    assert code == 1 and [f["code"] for f in report["findings"]] == ["LD106"]
    conv = report["summary"]["loss_convention"]
    assert conv["measured"] and conv["shifts"] and conv["ignore_index"] == -100


def test_without_a_model_the_hf_convention_is_assumed_and_said(cli, qwen3_tokenizer_dir):
    code, report = _dataset(cli, qwen3_tokenizer_dir, "ld117.py:minus_one")
    assert code == 1 and [f["code"] for f in report["findings"]] == ["LD117"]
    assert "HF convention assumed" in report["findings"][0]["message"]
    assert report["summary"]["loss_convention"]["measured"] is False
    result = cli("check-dataset", MULTITURN, "--tokenizer", qwen3_tokenizer_dir, "--dataset",
                 f"{MASKING / 'ld106.py:good'}")
    head = " ".join(result.out.split("\n")[0:3])
    assert "labels read the HF way (assumed, no --model)" in head


def test_check_reads_labels_by_the_live_models_convention(gpt_code, qwen3_tokenizer_dir,
                                                         monkeypatch):
    monkeypatch.syspath_prepend(str(MASKING))  # ld116.py imports its neighbour labeling.py
    ld116 = _module(MASKING / "ld116.py", "fixture_ld116")
    report = loradoctor.check(model=gpt_code.tiny_gpt(), tokenizer=qwen3_tokenizer_dir,
                              data=MULTITURN, dataset=ld116.bad, command="check-dataset")
    assert [f.code for f in report.errors] == ["LD116"]
    report = loradoctor.check(model=gpt_code.tiny_gpt(), tokenizer=qwen3_tokenizer_dir,
                              data=MULTITURN, dataset=ld116.good, command="check-dataset")
    assert report.ok and not report.findings


# --- check-adapter --model SPEC ------------------------------------------------------------------


def test_check_adapter_loads_a_peft_adapter_onto_the_users_own_model(cli, gpt_code, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    trained = get_peft_model(gpt_code.tiny_gpt(seed=0),
                             LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"]))
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():  # stands in for training: B moved away from zero
        for name, p in trained.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.005)
    trained.save_pretrained(tmp_path / "adapter")
    result = cli("check-adapter", tmp_path / "adapter", "--model", NANOGPT, "--json")
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert not [f for f in data["findings"] if f["severity"] != "info"], data["findings"]
    assert data["summary"]["loss_convention"]["labels_arg"] == "targets"
    # By hand: the adapter loaded by PEFT onto the same seeded GPT, every position's logits
    # (called with targets: without them the GPT returns the last position only).
    ids = torch.randint(0, 256, (2, 64), generator=torch.Generator().manual_seed(0))
    base = gpt_code.tiny_gpt(seed=0).eval()
    with torch.no_grad():
        before = base(ids, ids)[0]
        served = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
        after = served(ids, ids)[0]
    assert data["summary"]["served_max_abs_logit_diff"] == \
        pytest.approx(float((after - before).abs().max()), rel=1e-5)
