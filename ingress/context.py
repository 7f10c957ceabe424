"""The typed keys under which the ingress app keeps its settings, broker and publish gate."""

from aiohttp import web

from ingress.overload import PublishGate
from txmail.broker import Broker
from txmail.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
BROKER = web.AppKey("broker", Broker)
GATE = web.AppKey("publish_gate", PublishGate)
