"""Pretrained weights from a hub (timm's, open_clip's): read from the local cache when the hub cannot be reached,
and one line when they are not there, pointing to a weights file."""

import contextlib
import os
import socket
from collections.abc import Iterator
from urllib.parse import urlparse

from image_classification.errors import UserError

# What a failed download raises, through huggingface_hub, urllib or httpx (matched by name: none is imported)
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
DOWNLOAD_ERRORS = ("Connect", "Timeout", "EntryNotFound", "OfflineMode", "URLError", "HTTPError", "gaierror")


def _reachable(host: str) -> bool:
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


@contextlib.contextmanager
def hub_access() -> Iterator[None]:
    """The Hugging Face hub offline for the block when its host does not resolve: cached weights still load,
    and missing ones fail at once instead of after huggingface_hub's retries (about 50 s)."""
    from huggingface_hub import constants

    proxied = any(os.environ.get(name) for name in PROXY_VARIABLES)  # the proxy resolves the host, not this machine
    if constants.HF_HUB_OFFLINE or proxied or _reachable(urlparse(constants.ENDPOINT).hostname or "huggingface.co"):
        yield
        return
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = False


def download_failed(err: BaseException) -> BaseException | None:
    """The error in ``err``'s chain that says a download failed, if one does."""
    seen = err
    while seen is not None:
        if any(name in type(seen).__name__ for name in DOWNLOAD_ERRORS):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def could_not_download(err: BaseException, what: str, key: str) -> UserError | None:
    """The one line for a failed download of ``what`` (named by the config key ``key``), else None."""
    failed = download_failed(err)
    if failed is None:
        return None
    from image_classification.config import one_line  # imported here: config imports the networks' package

    reason = one_line(failed)[:200]
    return UserError(
        f"{key}: {what} could not be downloaded ({type(failed).__name__}: {reason}); download them where there "
        "is a network (they are cached), or give a weights file with network.checkpoint=<file>"
    )
