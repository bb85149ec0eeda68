"""The adapter a run ships (`check-adapter`): what the saved file holds, whether its keys reach
the base model's modules, and what it does to the base model's logits.

Two kinds of artifact:

- a PEFT folder: `adapter_config.json` and `adapter_model.safetensors` (or `adapter_model.bin`,
  read with `torch.load(weights_only=True)`: nothing in it is executed);
- a file the user's own save function wrote, checked with `--apply SPEC`: the apply function
  builds fresh adapters on the base and the load function beside it (`load_lora`,
  `load_adapter`, ...) loads the file into them.

Nothing is fetched from a hub and nothing is written into the adapter folder. The
measurements, computed once per run (`ctx.memo`), one module each:

- `files.artifact(ctx)`: the file's tensors and config, read without executing anything;
- `factors.py`: the (A, B) pairs the file holds, named as the base model names the layers;
- `effect.keys(ctx)` (`key_match.py`): the saved keys against the keys the loading code
  expects, and for those that match nothing the pattern that explains them (a `module.`
  prefix from DDP, `_orig_mod.` from `torch.compile`, a `base_model.model.` too many or too
  few, renamed layers);
- `effect.effect(ctx)`: the base model's logits on the probe batch; the adapter loaded
  exactly as its loading code loads it (PEFT's `PeftModel.from_pretrained`, or the user's load
  function: "served"); loaded with its keys put right ("intended"); merged into the base
  weights; and the relative size `||scaling * B @ A|| / ||W||` of each layer's update;
- `config_check.config_problems`: the file against its adapter_config.json and the base.
"""
