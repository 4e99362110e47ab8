"""``python -m fashsdk.serve --bundle B --index I``: the same as ``fashsdk serve``."""
import sys

from .command import main

sys.exit(main())
