"""Errors told in words an operator reads in a log or in ``txmail status``, by every
service alike, rather than as exception reprs."""

import os
import ssl

import aiohttp


def readable(error: BaseException) -> str:
    """What went wrong, in words: "cannot connect to ops.example.com:443: Connection
    refused", not the exception's repr."""
    if isinstance(error, aiohttp.ClientConnectorError):
        return f"cannot connect to {error.host}:{error.port}: {_os_reason(error.os_error)}"
    if isinstance(error, aiohttp.ServerDisconnectedError):
        return "the server closed the connection without answering"
    if isinstance(error, TimeoutError):
        return f"timed out ({error})" if str(error) else "timed out"
    if isinstance(error, OSError) and not error.errno and isinstance(error.__cause__, OSError):
        error = error.__cause__  # a client library's wrapper, e.g. aiosmtplib's
    if isinstance(error, OSError) and error.errno:
        return _os_reason(error)
    return str(error) or type(error).__name__


def _os_reason(error: OSError) -> str:
    if isinstance(error, ssl.SSLError):  # its errno is OpenSSL's, not the system's
        return error.strerror or str(error)
    # asyncio words a refused connection as "Connect call failed ('1.2.3.4', 443)":
    # the system's own text for the error number says what happened.
    if error.errno and error.errno > 0:
        return os.strerror(error.errno)
    return error.strerror or str(error) or type(error).__name__
