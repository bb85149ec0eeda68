"""Front ends for the tools people train with, each imported only when asked for.

`integrations.transformers`: `LoraDoctorCallback`, a `transformers.TrainerCallback` (also for
TRL's trainers, which are Trainers). Each is a thin layer over `loradoctor.api` and
`loradoctor.model.watch`.
"""
