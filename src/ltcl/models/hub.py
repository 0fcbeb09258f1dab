"""Pretrained weights over the network: a quick look at whether the host answers, and the hub's cache-only mode.

Without a network the Hugging Face hub retries every request with back-off, about 50 s for one timm model, before it
gives up or looks in its cache. So before timm or OpenCLIP fetch pretrained weights, ltcl opens one TCP connection
to the host (or to the proxy that the environment names) and waits :data:`PROBE_TIMEOUT_S` at most; when none
opens, the weights are read from the caches alone (:func:`hub_cache_only`), which fails at once when they are not
there. Nothing is downloaded here.
"""

from __future__ import annotations

import socket
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

PROBE_TIMEOUT_S = 2.0


def hub_url(repo_id: str) -> str:
    """The address of a Hugging Face hub repository (``HF_ENDPOINT`` respected)."""
    from huggingface_hub import constants

    return f"{constants.ENDPOINT.rstrip('/')}/{repo_id}"


def hub_offline_mode() -> bool:
    """Whether the hub reads its cache only already (``HF_HUB_OFFLINE=1``): it then makes no request to wait for."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def unreachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when a TCP connection to the host of ``url`` (or to its proxy) opens within ``timeout`` seconds;
    otherwise why not, e.g. "no connection to huggingface.co".

    Name resolution counts towards the timeout: the connection is tried in a daemon thread that is waited for at most
    ``timeout`` seconds, so a resolver that never answers costs no more than that.
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        proxy_parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = proxy_parts.hostname or "", proxy_parts.port or 80
    outcome: list[BaseException | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except Exception as err:  # any failure means no connection
            outcome.append(err)

    thread = threading.Thread(target=connect, name="ltcl-network-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    if outcome and outcome[0] is None:
        return None
    return f"no connection to {host}" + ("" if outcome else f" within {timeout:g} s")


@contextmanager
def hub_cache_only() -> Iterator[None]:
    """The Hugging Face hub answers from its cache only while the block runs, as under ``HF_HUB_OFFLINE=1``: a cached
    file is returned without a request, a missing one raises at once (an ``OSError``).

    The hub reads its offline switch on every request; it is set back when the block ends.
    """
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous
