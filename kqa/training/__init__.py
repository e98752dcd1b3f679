"""Fine-tuning without `transformers.Trainer`:

- `kqa.training.config`: `TrainConfig` (every field a YAML key and a flag),
- `kqa.training.recipe`: `QATrainingRecipe`, the Accelerate loop (evaluation, best-by-F1, exact resume),
- `kqa.training.optim`: AdamW parameter groups, the learning-rate schedule and its length,
- `kqa.training.inputs`: the train and validation examples a config names,
- `kqa.training.checkpoints`: checkpoints written whole, verified, loaded without pickle; best/ and final/,
- `kqa.training.state_files`: state dicts and RNG states as JSON + safetensors,
- `kqa.training.tracking`: wandb without a login, metrics.jsonl, peak memory,
- `kqa.training.evaluation`: a saved model on a SQuAD file → EM/F1 and prediction files (`evaluate.py`).

Nothing is imported here, so `import kqa.training.config` stays light.
"""
