"""Stage entry points: one module per stage, each runnable as ``python -m pipelines.<stage>``."""
