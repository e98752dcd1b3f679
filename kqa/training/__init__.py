"""Fine-tuning without `transformers.Trainer`:

- `kqa.training.config`: `TrainConfig` (every field a YAML key and a flag),
- `kqa.training.recipe`: `QATrainingRecipe`, the Accelerate loop (evaluation, best-by-F1, exact resume),
- `kqa.training.optim`: AdamW parameter groups and the learning-rate schedule,
- `kqa.training.checkpoints`: which checkpoint folders are complete, the latest one,
- `kqa.training.tracking`: wandb without a login, metrics.jsonl, peak memory,
- `kqa.training.evaluation`: a saved model on a SQuAD file → EM/F1 and prediction files (`evaluate.py`).

Nothing is imported here, so `import kqa.training.config` stays light.
"""
