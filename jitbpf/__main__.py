"""``python -m jitbpf``: the same as the ``jitbpf`` command."""

import sys

from jitbpf.cli import main

if __name__ == "__main__":
    sys.exit(main())
