"""Decodes one HTTP request as a CloudEvent with the public `cloudevents` SDK.

Reads {"headers": {...}, "body": "<base64>"} on stdin, as a webhook receiver
got it, and prints the event the SDK made of it: its attributes and data, as
JSON. The SDK picks binary or structured mode itself (`ce-` headers or not)
and refuses what is not a valid CloudEvent, which makes this exit non-zero.
Run by the API tests (tests/api/cloudevents.rs) with the SDK on PYTHONPATH.
"""

import base64
import json
import sys

from cloudevents.core.bindings.http import HTTPMessage, from_http_event


def main():
    request = json.load(sys.stdin)
    message = HTTPMessage(headers=request["headers"], body=base64.b64decode(request["body"]))
    event = from_http_event(message)
    data = event.get_data()
    if isinstance(data, (bytes, str)):
        data = json.loads(data)
    json.dump(
        {
            "specversion": event.get_specversion(),
            "id": event.get_id(),
            "source": event.get_source(),
            "type": event.get_type(),
            "subject": event.get_subject(),
            "time": event.get_time().isoformat(),
            "datacontenttype": event.get_datacontenttype(),
            "data": data,
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
