#!/usr/bin/env python3
"""Serves Keystone's WSGI application for the tests: keystone-wsgi.py CONFIG PORT [STRICT_PORT].

Keystone's app parses sys.argv through oslo.config, so the arguments are taken and
cleared first. A threaded wsgiref server, on 127.0.0.1 only.

Its store is SQLite, which takes one writer at a time: two requests that both write (users,
projects, trusts and role assignments made by suites running side by side) can fail with
"database is locked" however long the busy timeout, when each has read first. So requests
that may write (any method but GET and HEAD) take turns; reads, token validation among
them, run at once.

STRICT_PORT serves the same Keystone as a cloud with `[token] allow_rescope_scoped_token =
false`: its requests that may write (token requests among them) are answered with that option
set, under the same lock, so no request on PORT sees it."""
import os
import sys
import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

config, port = sys.argv[1], int(sys.argv[2])
strict_port = int(sys.argv[3]) if len(sys.argv) > 3 else None
sys.argv = sys.argv[:1]
os.environ["OS_KEYSTONE_CONFIG_FILES"] = config

from keystone.server import wsgi  # noqa: E402  (after the environment is set)


class Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class Handler(WSGIRequestHandler):
    def log_message(self, *args):
        pass


writing = threading.Lock()


def one_writer(app, strict=False):
    def serve(environ, start_response):
        if environ.get("REQUEST_METHOD") in ("GET", "HEAD"):
            return app(environ, start_response)
        with writing:
            if strict:
                CONF.set_override("allow_rescope_scoped_token", False, group="token")
            try:
                # The whole body is produced under the lock: the write happens while it is made.
                body = app(environ, start_response)
                try:
                    return list(body)
                finally:
                    getattr(body, "close", lambda: None)()
            finally:
                if strict:
                    CONF.clear_override("allow_rescope_scoped_token", group="token")

    return serve


application = wsgi.initialize_public_application()
from keystone.conf import CONF  # noqa: E402  (after the application read the configuration)

if strict_port:
    strict = make_server("127.0.0.1", strict_port, one_writer(application, strict=True), Server,
                         handler_class=Handler)
    threading.Thread(target=strict.serve_forever, daemon=True).start()
make_server("127.0.0.1", port, one_writer(application), Server, handler_class=Handler).serve_forever()
