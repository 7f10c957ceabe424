"""The typed keys under which the ingress app keeps its settings, broker and publish gate."""

from aiohttp import web

from txmail.core.broker import Broker
from txmail.core.settings import Settings
from txmail.ingress.overload import PublishGate

SETTINGS = web.AppKey("settings", Settings)
BROKER = web.AppKey("broker", Broker)
GATE = web.AppKey("publish_gate", PublishGate)
