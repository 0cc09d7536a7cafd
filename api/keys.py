"""The application's shared state, as typed keys (aiohttp's `web.AppKey`)."""

from __future__ import annotations

from aiohttp import web

from pantau.access import Access
from pantau.alerts import AlertStore
from pantau.settings import Settings
from pantau.store import Store

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", Store)
ALERTS = web.AppKey("alerts", AlertStore)
ACCESS = web.AppKey("access", Access)
