"""The model domain: finding adapters, applying the user's LoRA code, the probe batch,
the shared measurements, numerics per dtype, training steps, and leaving the model as found."""
