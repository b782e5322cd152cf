"""`python -m adapter`: read the environment, then serve until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import sys

from adapter.app import serve
from adapter.config import ConfigError, load_settings
from adapter.scheduling.scheduler import NoGpuMetrics
from adapter.triton.embedded import EmbeddedTritonError


def main() -> int:
    try:
        settings = load_settings()
    except ConfigError as err:
        print(f"adapter: configuration error: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        asyncio.run(serve(settings))
    except EmbeddedTritonError as err:
        logging.getLogger("adapter").error("%s", err)
        return 1
    except NoGpuMetrics as err:
        logging.getLogger("adapter").error("cannot start: %s", err.message)
        return 2
    except OSError as err:
        logging.getLogger("adapter").error("cannot start: %s", err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
