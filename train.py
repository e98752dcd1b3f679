"""Fine-tune an encoder for Korean extractive QA: the same command as `kqa train` (kqa/cli/train.py).

python train.py --config configs/tiny-cpu-smoke.yaml --output_dir outputs/smoke
accelerate launch train.py --config configs/klue-bert-base.yaml --per_device_train_batch_size 16
"""

import sys

from kqa.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
