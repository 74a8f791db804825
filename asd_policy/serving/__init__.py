"""Serving a policy over the network: an openpi-compatible websocket server with cross-client
batching, and :class:`RemotePolicy`, the client the control loop uses. See docs/serving.md."""
from asd_policy.serving.config import API_KEY_ENV, ServeConfig
from asd_policy.serving.remote import RemoteError, RemotePolicy, RemoteStats
from asd_policy.serving.server import PROTOCOL, PolicyServer, ServerThread, load_server

__all__ = ["API_KEY_ENV", "PROTOCOL", "PolicyServer", "RemoteError", "RemotePolicy", "RemoteStats",
           "ServeConfig", "ServerThread", "load_server"]
