"""``python -m kube_ip_tracker.demo``."""

import sys

from .main import main

sys.exit(main())
