"""``python -m sidecar.workers --fd FD``: one worker process (see :mod:`.child`)."""

import sys

from sidecar.workers.child import main

sys.exit(main())
