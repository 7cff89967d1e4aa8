"""End-to-end test through an SDK generated from openapi.yaml.

Run by .ci/run after `openapi-python-client generate` wrote the package
`thinhook_client` into GENERATED (argv[2]). It starts the gateway (argv[1],
the thinhook binary) on SQLite, and then, using only the generated client:
gets a token, registers a subscription, posts a comment, receives the thin
webhook on a local receiver that verifies it with the public `standardwebhooks`
library, and fetches the comment the webhook links to.
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BINARY, GENERATED = os.path.abspath(sys.argv[1]), sys.argv[2]
sys.path.insert(0, GENERATED)

from standardwebhooks.webhooks import Webhook  # noqa: E402
from thinhook_client import AuthenticatedClient, Client  # noqa: E402
from thinhook_client.api.auth import issue_token  # noqa: E402
from thinhook_client.api.comments import create_comment, get_comment  # noqa: E402
from thinhook_client.api.messages import create_message  # noqa: E402
from thinhook_client.api.subscriptions import create_subscription  # noqa: E402
from thinhook_client.models import (  # noqa: E402
    EventType, NewComment, NewMessage, NewSubscription, TokenRequest,
)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    work = tempfile.mkdtemp(prefix="thinhook-sdk-")
    port, hook_port = free_port(), free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "THINHOOK_LISTEN": f"127.0.0.1:{port}",
        "THINHOOK_DELIVERY_ALLOW_CIDRS": "127.0.0.0/8",
        "THINHOOK_LOG_LEVEL": "warn",
    }
    # Only `migrate` and `serve` create the database; `clients create` needs one.
    subprocess.run([BINARY, "migrate"], cwd=work, env=env, capture_output=True, text=True, check=True)
    # The round trip runs in a workspace of its own, as a tenant would.
    workspace = subprocess.run([BINARY, "workspaces", "create", "--name", "sdk"], cwd=work, env=env,
                               capture_output=True, text=True, check=True).stdout
    workspace_id = workspace.split("workspace_id:")[1].split()[0]
    created = subprocess.run([BINARY, "clients", "create", "--name", "sdk", "--workspace", workspace_id],
                             cwd=work, env=env, capture_output=True, text=True, check=True).stdout
    client_id = created.split("client_id:")[1].split()[0]
    client_secret = created.split("client_secret:")[1].split()[0]

    received, secret_box = [], {}

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["content-length"]))
            try:
                event = Webhook(secret_box["secret"]).verify(body, dict(self.headers))
            except Exception as error:  # a bad signature must fail the test
                received.append(("rejected", str(error)))
                self.send_response(400)
            else:
                received.append(("verified", event))
                self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    receiver = ThreadingHTTPServer(("127.0.0.1", hook_port), Hook)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()

    server = subprocess.Popen([BINARY, "serve"], cwd=work, env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(200):  # bounded wait for start-up
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)

        token = issue_token.sync(client=Client(base_url=base), body=TokenRequest(
            grant_type="client_credentials", client_id=client_id, client_secret=client_secret))
        assert token is not None and token.token_type == "Bearer", token
        api = AuthenticatedClient(base_url=base, token=token.access_token)

        message = create_message.sync(client=api, body=NewMessage(text="from the SDK"))
        subscription = create_subscription.sync(client=api, body=NewSubscription(
            url=f"http://127.0.0.1:{hook_port}/hook", event_types=[EventType.COMMENT_CREATED],
            message_id=message.id))
        secret_box["secret"] = subscription.secret
        comment = create_comment.sync(message.id, client=api, body=NewComment(text="read me through the API"))

        for _ in range(400):  # bounded wait for the webhook
            if received:
                break
            time.sleep(0.05)
        assert received, "no webhook arrived"
        outcome, event = received[0]
        assert outcome == "verified", event
        assert "read me" not in json.dumps(event), "the webhook carried the comment"
        resource = event["data"]["resource"]
        assert resource["id"] == comment.id, event

        fetched = get_comment.sync(event["data"]["message_id"], resource["id"], client=api)
        assert fetched.text == "read me through the API", fetched
        print("sdk e2e: token, subscription, comment, verified webhook, fetch: ok")
    finally:
        server.terminate()
        server.wait(timeout=30)
        receiver.shutdown()


if __name__ == "__main__":
    main()
