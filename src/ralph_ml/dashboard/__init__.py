"""Read-only web dashboard: ``ralph-ml dashboard`` serves runs, charts and live logs."""

from .runs import RunStore
from .server import DashboardServer, make_server

__all__ = ["DashboardServer", "RunStore", "make_server"]
