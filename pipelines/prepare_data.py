"""Ray job: the data stage. `ray job submit --working-dir . -- python pipelines/prepare_data.py --config F`"""

import sys

from raygen.cli import main

if __name__ == "__main__":
    sys.exit(main(["data", *sys.argv[1:]]))
