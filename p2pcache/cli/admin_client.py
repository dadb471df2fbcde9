"""Asking the running node's admin listener (what `status` and `which` do).

The admin listener is on this machine (127.0.0.1:8082 unless `admin.listen` or `--admin` says
otherwise); when nothing answers there, the user most likely has no node running, and the
error says that rather than printing a socket error.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from p2pcache.config import ListenAddress
from p2pcache.errors import P2PCacheError

# A status answer is a few KiB; a megabyte is more than any honest answer.
MAX_ANSWER = 1 << 20


class NodeNotRunning(P2PCacheError):
    """Nothing answers on the admin address: no node runs there."""


def get_json(admin: ListenAddress, path: str, timeout: float = 30) -> Any:
    """GET `path` from the admin listener at `admin` and parse the JSON answer."""
    url = f"http://{admin}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = response.read(MAX_ANSWER + 1)
    except urllib.error.HTTPError as e:
        raise P2PCacheError(f"the node at {admin} answered {url} with HTTP {e.code}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, ConnectionRefusedError):
            raise NodeNotRunning(
                f"no p2pcache node is running with its admin listener at {admin} (connection "
                "refused); start one with `p2pcache serve`, or name its admin address with "
                "--admin HOST:PORT or admin.listen in the configuration file"
            ) from None
        raise P2PCacheError(f"cannot reach the node's admin listener at {url}: {reason}") from None
    if len(body) > MAX_ANSWER:
        raise P2PCacheError(f"the answer from {url} is larger than {MAX_ANSWER} bytes")
    try:
        return json.loads(body)
    except ValueError:
        raise P2PCacheError(f"{url} did not answer with JSON; is it a p2pcache node?") from None
