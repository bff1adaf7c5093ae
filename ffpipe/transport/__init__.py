"""Channels between neighbouring stages: send, recv, close. Bounded and ordered."""
from ffpipe.transport.base import Channel

__all__ = ["Channel"]
