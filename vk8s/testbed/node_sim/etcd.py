"""The one thing the simulation asks the testbed's etcd directly: forget an inner cluster."""

from __future__ import annotations

import base64
import json
import urllib.request


def delete_etcd_prefix(etcd_url: str, prefix: str) -> None:
    """Deletes every key under `prefix` through etcd's JSON gateway."""
    key = prefix.rstrip("/") + "/"
    range_end = key[:-1] + chr(ord(key[-1]) + 1)
    body = json.dumps(
        {"key": base64.b64encode(key.encode()).decode(), "range_end": base64.b64encode(range_end.encode()).decode()}
    ).encode()
    request = urllib.request.Request(f"{etcd_url}/v3/kv/deleterange", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()
