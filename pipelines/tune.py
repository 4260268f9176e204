"""Ray job: hyperparameter search over train/model fields (tune.space), then register the best model.
`ray job submit --working-dir . -- python pipelines/tune.py --config pipelines/configs/tune.yaml`"""

import sys

from raygen.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
