"""TODO docstring."""


class TaskParts:
    """What a task brings to the shared loop: its model, trainer and input pipelines."""

    def __init__(self, build_model, trainer, datasets, units_per_step, unit="tok",
                 language_model=lambda model: model):
        self.build_model, self.trainer, self.datasets = build_model, trainer, datasets
        self.units_per_step, self.unit, self.language_model = units_per_step, unit, language_model
