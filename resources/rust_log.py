"""The default log filter of the Rust libraries in this process (Sail, connectorx): their
env_logger reads `RUST_LOG` once, as each library starts."""

from __future__ import annotations

import os

# Errors only, and none from r2d2 (connectorx's connection pool): a PostgreSQL server that is
# down made it print seven `[... ERROR r2d2]` lines beside the one line the CLI says.
RUST_LOG_DEFAULT = "error,r2d2=off"


def quiet_rust_logs() -> None:
    """Set `RUST_LOG`'s default before a Rust library loads; a user's own `RUST_LOG` wins."""
    os.environ.setdefault("RUST_LOG", RUST_LOG_DEFAULT)
