"""The device check: what only a GPU can show, in one prepared run.

    python bench/gpu_check.py OUT_DIR

Run on a machine with one CUDA GPU, with the artifacts cache (`LORADOCTOR_CACHE`) carried
over, since nothing can be downloaded there. Three parts, each on its own, each printing one
block and writing `OUT_DIR/<part>.json`:

1. `numerics`: every numerics fixture (fixtures/numerics/cases.py) judged by the LD3xx rules
   twice: on the GPU in torch's real CUDA fp16 and bf16 kernels, and on the CPU with both
   dtypes emulated (what a CPU-only user gets). Same findings, statuses, verdict marks and
   first inf/nan module is what "as a GPU computes them" promises; losses are compared too.
2. `qlora`: bitsandbytes' CUDA kernels (NF4 and LLM.int8): a textbook QLoRA
   (`prepare_model_for_kbit_training`, PEFT LoRA r=8 on every linear layer) gated through
   `loradoctor.check(model=...)`, which must find no error, and the same with A and B both
   drawn at random (`init_lora_weights=False`: B is not zero), which LD401 must stop.
3. `timings`: bench_qlora.py, bench_check_model.py and bench_numerics.py with `--device cuda`.

SmolLM2-135M's weights (a 98 MB GGUF, then 517 MB of fp32) cannot travel to the device, so the
SmolLM2 model there has SmolLM2's config, tokenizer and size with seeded random weights: its
timings are SmolLM2's, its numerics are not (part 1 uses the real numerics fixtures instead).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# The device under test; GPU_CHECK_DEVICE=cpu runs the same script here as a dry run.
DEVICE = os.environ.get("GPU_CHECK_DEVICE", "cuda")


def versions() -> dict:
    import torch
    import transformers
    out = {"torch": torch.__version__, "transformers": transformers.__version__,
           "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    for name in ("peft", "bitsandbytes", "accelerate"):
        try:
            out[name] = __import__(name).__version__
        except Exception as exc:  # noqa: BLE001 - reported, not fatal
            out[name] = f"missing ({type(exc).__name__})"
    return out


def smollm2_shaped() -> Path:
    """The cached SmolLM2 folder, its weights drawn (seed 0) from its config if absent."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from loradoctor import assets
    folder = assets.cache_dir() / "smollm2-135m-instruct"
    if not (folder / "model.safetensors").exists():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
        model.save_pretrained(folder, safe_serialization=True)
        (folder / ".complete").write_text("ok\n")
    return folder


# --- 1. numerics: real CUDA kernels against the CPU emulation ---------------------------------


def _cases():
    path = ROOT / "fixtures" / "numerics" / "cases.py"
    spec = importlib.util.spec_from_file_location("numerics_cases", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _judgement(report) -> dict:
    numerics = report.summary.get("numerics", {})
    verdict = numerics.get("verdict") or ""
    marks = {p.split()[0]: p.split()[1] for p in verdict.removeprefix("trains in: ").split(" · ")
             if p}
    return {
        "findings": sorted([f.code, f.severity.value, f.location] for f in report.findings),
        "statuses": [[r.code, r.status.value if hasattr(r.status, "value") else str(r.status)]
                     for r in report.results],
        "marks": marks,
        "first_nonfinite": {d: v.get("first_nonfinite")
                            for d, v in numerics.get("dtypes", {}).items()},
        "loss": {d: v.get("loss") for d, v in numerics.get("dtypes", {}).items()},
        "measured": numerics.get("emulated"),
    }


def numerics() -> dict:
    from loradoctor import api
    from loradoctor.inputs.specs import parse_kwargs
    from loradoctor.model.numerics import emulation

    emulation.native_on_cpu = lambda dtype: dtype == "fp32"  # bf16 emulated too, as on most CPUs
    module = _cases()
    invocations = {}
    for case in module.CASES:
        invocations.setdefault(case.invocation, []).append(f"{case.rule}-{case.kind}")
    rows, agree = [], 0
    for (model, apply, args), names in invocations.items():
        model_dir = module.models()[model]()
        judged = {}
        for where, real in ((DEVICE, True), ("cpu", False)):
            run = api.prepare(model=str(model_dir), apply=apply,
                              apply_args=parse_kwargs(list(args)), select=["LD3"],
                              command="check-model", device=where, real_dtypes=real)
            judged[real] = _judgement(run.execute())
        gpu, cpu = judged[True], judged[False]
        same = all(gpu[k] == cpu[k] for k in ("findings", "statuses", "marks", "first_nonfinite"))
        rel = {}
        for dtype, a in gpu["loss"].items():
            b = cpu["loss"].get(dtype)
            if a is not None and b is not None and math.isfinite(a) and math.isfinite(b):
                rel[dtype] = abs(a - b) / max(abs(a), 1e-12)
            else:
                rel[dtype] = None if (a is None or not math.isfinite(a)) == \
                    (b is None or not math.isfinite(b)) else "finite in one only"
        agree += same
        rows.append({"cases": names, "model": model, "args": list(args), "same": same,
                     "loss_rel_diff": rel, "gpu": gpu, "cpu_emulated": cpu})
        print(f"  {'same' if same else 'DIFFERS'}  {'+'.join(names)} on {model} {list(args)}: "
              f"gpu {gpu['marks']} cpu {cpu['marks']} loss rel diff {rel}", flush=True)
        if not same:
            print(f"     gpu findings {gpu['findings']}\n     cpu findings {cpu['findings']}")
    print(f"numerics: {agree} of {len(rows)} fixture runs judged the same on the GPU's real "
          f"kernels as emulated on the CPU", flush=True)
    return {"agree": agree, "runs": len(rows), "rows": rows}


# --- 2. QLoRA on bitsandbytes' CUDA kernels ---------------------------------------------------


def qlora() -> dict:
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    import loradoctor
    from loradoctor.inputs.pretrained import load_model, load_tokenizer

    folder = smollm2_shaped()
    tok = load_tokenizer(folder)
    out = {}
    for bits in ("4bit", "8bit"):
        for init in (True, False):
            torch.manual_seed(0)
            model = prepare_model_for_kbit_training(load_model(folder, "fp32", DEVICE, bits))
            model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16,
                                                     target_modules="all-linear",
                                                     init_lora_weights=init,
                                                     task_type="CAUSAL_LM"))
            start = time.perf_counter()
            report = loradoctor.check(model=model, tokenizer=tok, dtypes="fp32")
            took = time.perf_counter() - start
            name = f"{bits} init={init}"
            out[name] = {"exit": report.exit_code, "seconds": round(took, 2),
                         "findings": [[f.code, f.severity.value, f.message[:160]]
                                      for f in report.findings],
                         "skipped": [r.code for r in report.results
                                     if str(getattr(r.status, "value", r.status)) == "skip"]}
            errors = [f.code for f in report.findings if f.severity.value == "error"]
            print(f"  {name}: exit {report.exit_code} in {took:.1f} s, errors {errors}, "
                  f"findings {[(f.code, f.severity.value) for f in report.findings]}", flush=True)
            del model
            if DEVICE == "cuda":
                torch.cuda.empty_cache()
    ok = out["4bit init=True"]["exit"] == 0 and out["8bit init=True"]["exit"] == 0 and \
        all("LD401" in [f[0] for f in out[f"{b} init=False"]["findings"]]
            for b in ("4bit", "8bit"))
    print(f"qlora: textbook clean and non-zero B stopped by LD401 on both: {ok}", flush=True)
    return {"ok": ok, "runs": out}


# --- 3. timings ---------------------------------------------------------------------------------


def timings() -> dict:
    smollm2_shaped()
    out = {}
    for script, args in (("bench_qlora.py", ["--device", DEVICE]),
                         ("bench_check_model.py", ["--device", DEVICE, "--all-rules"]),
                         ("bench_numerics.py", ["--device", DEVICE])):
        start = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args],
                                  capture_output=True, text=True, timeout=150, cwd=ROOT)
            text = proc.stdout + (proc.stderr[-1500:] if proc.returncode else "")
        except subprocess.TimeoutExpired as exc:
            text = f"timed out after 150 s\n{exc.stdout or ''}"
        out[script] = {"seconds": round(time.perf_counter() - start, 1), "output": text}
        print(f"--- {script} {' '.join(args)} ({out[script]['seconds']} s)\n{text}", flush=True)
    return out


def main(out_dir: str) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = versions()
    print(f"versions: {info}", flush=True)
    (out / "versions.json").write_text(json.dumps(info, indent=1))
    for part in (numerics, qlora, timings):
        print(f"=== {part.__name__}", flush=True)
        start = time.perf_counter()
        try:
            result = part()
        except Exception:  # noqa: BLE001 - one part failing leaves the others to run
            result = {"error": traceback.format_exc()}
            print(result["error"], flush=True)
        result["part_seconds"] = round(time.perf_counter() - start, 1)
        (out / f"{part.__name__}.json").write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "gpu-check")
