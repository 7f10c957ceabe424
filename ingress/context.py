"""The typed keys under which the ingress app keeps its settings and broker."""

from aiohttp import web

from txmail.broker import Broker
from txmail.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
BROKER = web.AppKey("broker", Broker)
