"""The services' MQTT connection: MQTT 5, a durable session, and acknowledgements we control.

paho acknowledges a QoS 1 message the moment it arrives, before any handler has seen it, so
whatever sat in the client's queue was lost when the process died or the connection dropped.
paho 2 can leave the acknowledgement to us (`manual_ack_set`), but aiomqtt 2.x does not expose
it, so we reach its paho client here, and only here: the runtime acknowledges a message once
the message is safely in the journal. Until then the broker keeps it in the session and
delivers it again after a reconnect. (aiomqtt's v3 rewrite is to expose this; pinned <3.)
"""

from __future__ import annotations

import aiomqtt

from schemas.mqtt import connect
from services.runtime.settings import Settings


def service_client(settings: Settings, identifier: str) -> aiomqtt.Client:
    """A client with a durable session (kept across restarts) and manual acknowledgements."""
    client = connect(
        settings.mqtt_endpoint(identifier),
        identifier,
        clean_start=False,  # keep the broker session across restarts
        session_expiry_s=settings.session_expiry_s,
        keepalive=15,
        timeout=5,  # a publish into a dead connection fails within 5 s
    )
    client._client.manual_ack_set(True)
    return client


def ack(client: aiomqtt.Client, message: aiomqtt.Message) -> None:
    """Acknowledge a message to the broker (in arrival order, as MQTT requires)."""
    if message.qos > 0:
        client._client.ack(message.mid, message.qos)
