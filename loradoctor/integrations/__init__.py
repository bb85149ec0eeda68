"""Front ends for the tools people train with, each imported only when asked for.

`integrations.transformers`: `LoraDoctorCallback`, a `transformers.TrainerCallback` (also for
TRL's trainers, which are Trainers). `integrations.ray`: `check_dataset(..., shards=N)`, the
`check-dataset --shard` runs as Ray tasks, merged (`loradoctor.shards`).
`integrations.axolotl`: `LoraDoctorPlugin`, listed under `plugins:` in an Axolotl YAML, adds the
callback to the run. Each is a thin layer over `loradoctor.api` and `loradoctor.watchdog`.
"""
