"""Student scoring: IFD and reversed IFD of candidates (fast batched scorer, stage functions).

Modules: ``templates`` (prompt formats), ``config`` (``ScoringConfig``), ``formulas`` (IFD maths),
``scorer`` (the batched forward passes; imports torch), ``stage`` (file in, file out).
"""
