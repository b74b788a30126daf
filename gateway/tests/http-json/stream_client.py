"""notify's Subscribe server stream over plain HTTP through the gateway:
as newline-delimited JSON, and as Server-Sent Events (sseclient-py) that
resume after a reconnect from Last-Event-ID, with nothing missed and
nothing twice. Usage: stream_client.py BASE USER_TOKEN USER_ID SERVICE_TOKEN"""
import json
import sys

import requests
import sseclient

base, token, user_id, service_token = sys.argv[1:5]
topic = f"user:{user_id}"
auth = {"Authorization": f"Bearer {token}"}
stream_url = f"{base}/v1/notifications/stream"


def publish(n):
    response = requests.post(
        f"{base}/v1/notifications",
        headers={"Authorization": f"Bearer {service_token}"},
        json={
            "topic": topic,
            "id": f"vote-{n}",
            "payload": {
                "@type": "type.googleapis.com/munity.events.v1.VoteCast",
                "eventId": "e1",
                "optionId": n,
                "userId": user_id,
            },
        },
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return response.json()["notification"]


def next_notification(items):
    """The next notification among the stream's items (heartbeats skipped)."""
    for item in items:
        if "notification" in item:
            return item["notification"]
        assert "heartbeat" in item or "subscribed" in item, item
    raise AssertionError("the stream ended")


# NDJSON: one {"result": message} per line.
with requests.get(stream_url, params={"topics": topic}, headers=auth, stream=True, timeout=15) as response:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-ndjson", response.headers
    lines = (json.loads(line)["result"] for line in response.iter_lines() if line)
    first = next(lines)
    assert first["subscribed"]["positions"][0]["topic"] == topic, first
    published = publish(1)
    received = next_notification(lines)
    assert received["offset"] == published["offset"] == "1", received
    assert received["kind"] == "munity.events.v1.VoteCast", received
    assert received["payload"] == {
        "@type": "type.googleapis.com/munity.events.v1.VoteCast",
        "eventId": "e1", "optionId": 1, "userId": user_id,
    }, received


def sse(headers):
    response = requests.get(stream_url, params={"topics": topic},
                            headers={**auth, "Accept": "text/event-stream", **headers},
                            stream=True, timeout=15)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/event-stream", response.headers
    return response, sseclient.SSEClient(response).events()


# SSE: every event has an id holding the stream's position.
response, events = sse({})
first = next(events)
assert "subscribed" in json.loads(first.data) and first.id, first
publish(2)
while True:
    event = next(events)
    data = json.loads(event.data)
    if "notification" in data:
        assert data["notification"]["offset"] == "2", data
        last_id = event.id
        break
response.close()

# Gone for a while: 3 is published meanwhile. Back with Last-Event-ID, as
# an EventSource reconnects: 3 comes (missed), 2 does not (seen).
publish(3)
response, events = sse({"Last-Event-ID": last_id})
items = (json.loads(event.data) for event in events)
resumed = next_notification(items)
assert resumed["offset"] == "3", resumed
assert resumed["payload"]["optionId"] == 3, resumed
response.close()

# A Last-Event-ID this gateway never sent is a clear 400.
bad = requests.get(stream_url, params={"topics": topic},
                   headers={**auth, "Accept": "text/event-stream", "Last-Event-ID": "nope!"}, timeout=10)
assert bad.status_code == 400 and bad.json()["code"] == 3, bad.text

print("stream_client.py: ok")
