#!/usr/bin/env bash
# The delivery tests run on RabbitMQ too (127.0.0.1:5672, guest/guest, one vhost per test): start
# it where nothing listens there, installing it first where it is missing (we are root on CI).
set -euo pipefail
listening() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }
listening && exit 0
if ! command -v rabbitmq-server >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        apt-get update -qq && apt-get install -y -qq rabbitmq-server >/dev/null
    else
        echo "rabbitmq-server is missing: install it (the RabbitMQ delivery tests need it)" >&2
        exit 1
    fi
fi
rabbitmq-server -detached
rabbitmqctl await_startup >/dev/null
echo "rabbitmq-server started" >&2
