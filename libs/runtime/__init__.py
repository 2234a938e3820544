"""What every service process shares: settings, logging, metrics endpoint, NATS wiring."""

from libs.runtime.http import OperatorServer
from libs.runtime.logging import configure_logging
from libs.runtime.service import Service, connect_nats, serve
from libs.runtime.settings import BucketName, BucketOwnerSettings, ReadApiToken, ServiceSettings

__all__ = [
    "BucketName",
    "BucketOwnerSettings",
    "OperatorServer",
    "ReadApiToken",
    "Service",
    "ServiceSettings",
    "configure_logging",
    "connect_nats",
    "serve",
]
