#!/usr/bin/env python3
"""Serves Keystone's WSGI application for the tests: keystone-wsgi.py CONFIG PORT.

Keystone's app parses sys.argv through oslo.config, so the arguments are taken and
cleared first. A threaded wsgiref server, on 127.0.0.1 only."""
import os
import sys
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

config, port = sys.argv[1], int(sys.argv[2])
sys.argv = sys.argv[:1]
os.environ["OS_KEYSTONE_CONFIG_FILES"] = config

from keystone.server import wsgi  # noqa: E402  (after the environment is set)


class Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class Handler(WSGIRequestHandler):
    def log_message(self, *args):
        pass


make_server("127.0.0.1", port, wsgi.initialize_public_application(), Server, handler_class=Handler).serve_forever()
