"""`python -m deploy_checks` (from scripts/) or `python -m scripts.deploy_checks` (from the root)."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
