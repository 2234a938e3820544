"""What every service process shares: settings, logging, metrics endpoint, NATS wiring."""

from libs.runtime.http import OperatorServer
from libs.runtime.logging import configure_logging
from libs.runtime.service import Service, connect_nats
from libs.runtime.settings import ServiceSettings

__all__ = ["OperatorServer", "Service", "ServiceSettings", "configure_logging", "connect_nats"]
