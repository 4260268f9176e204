"""Ray job: train on prepared data and register the model.
`ray job submit --working-dir . -- python pipelines/train.py --config pipelines/configs/demo.yaml`"""

import sys

from raygen.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
