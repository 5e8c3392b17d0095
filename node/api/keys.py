"""Typed keys of the objects the handlers find on the aiohttp application."""
from __future__ import annotations

from aiohttp import web

from ..log import Log
from ..metrics import NodeMetrics

LOG_KEY = web.AppKey("log", Log)
METRICS_KEY = web.AppKey("metrics", NodeMetrics)
SETTINGS_KEY = web.AppKey("settings", object)
STARTED_KEY = web.AppKey("started", float)
READY_KEY = web.AppKey("ready", dict)
CLUSTER_KEY = web.AppKey("cluster", object)  # the ClusterMember on a clustered node; absent on a single node
