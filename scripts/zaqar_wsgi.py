"""Zaqar's WSGI application for a multi-process server (load runs): the local zaqar-server
is single-threaded HTTP/1.0, one request at a time.

    HERALD_ZAQAR_CONFIG=zaqar.conf gunicorn --pythonpath scripts -w 4 -b 127.0.0.1:PORT zaqar_wsgi:application

The configuration file is the one `scripts/servers` writes for its noauth Zaqar, so both
serve the same queues (the same Redis store)."""
import os

from oslo_config import cfg
from oslo_log import log

from zaqar import bootstrap

CONF = cfg.CONF
log.register_options(CONF)
CONF(project="zaqar", args=["--config-file", os.environ["HERALD_ZAQAR_CONFIG"]])
log.setup(CONF, "zaqar")
application = bootstrap.Bootstrap(CONF).transport.app
