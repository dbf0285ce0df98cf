"""``python -m medpipe.finetune ARGS`` == ``medpipe finetune ARGS`` (handy under torchrun)."""

import sys

from medpipe.cli import main

sys.exit(main(["finetune", *sys.argv[1:]]))
