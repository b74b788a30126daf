"""HTTP/JSON through the gateway with Python `requests`: a plain client
that knows nothing of gRPC. Usage: rest_client.py BASE_URL"""
import sys
import uuid

import requests

base = sys.argv[1].rstrip("/")
session = requests.Session()


def check(response, status):
    assert response.status_code == status, (
        f"{response.request.method} {response.request.url}: "
        f"{response.status_code} {response.text}"
    )
    assert response.headers["content-type"].startswith("application/json"), response.headers
    return response.json()


email = f"py-{uuid.uuid4().hex[:10]}@example.com"
registered = check(
    session.post(f"{base}/v1/auth/register",
                 json={"email": email, "password": "correct horse", "displayName": "Py"}),
    200,
)
assert registered["user"]["email"] == email, registered
assert registered["accessTokenExpiresAt"].endswith("Z"), registered  # Timestamp as RFC 3339

login = check(session.post(f"{base}/v1/auth/login",
                           json={"email": email, "password": "correct horse"}), 200)
token = login["accessToken"]
auth = {"Authorization": f"Bearer {token}"}

me = check(session.get(f"{base}/v1/me", headers=auth), 200)
assert me["email"] == email and me["roles"] == ["ROLE_USER"], me
assert me["displayName"] == "Py", me

# Path variables, body and query parameters.
community = check(session.post(f"{base}/v1/communities", headers=auth,
                               json={"name": "Chess club", "description": "Tuesdays"}), 200)
fetched = check(session.get(f"{base}/v1/communities/{community['id']}", headers=auth), 200)
assert fetched["name"] == "Chess club", fetched
members = check(session.get(f"{base}/v1/communities/{community['id']}/members",
                            headers=auth, params={"pageSize": 10}), 200)
assert [m["role"] for m in members["members"]] == ["MEMBER_ROLE_OWNER"], members

# 400 with the service's field violations.
bad = check(session.post(f"{base}/v1/auth/register",
                         json={"email": "not-an-email", "password": "short", "displayName": ""}), 400)
assert bad["code"] == 3, bad
violations = {v["field"] for d in bad["details"] for v in d.get("fieldViolations", [])}
assert {"email", "password"} <= violations, bad

# 400 from the gateway itself: unknown field, bad JSON, unknown query parameter.
unknown = check(session.post(f"{base}/v1/auth/login", json={"email": email, "nope": 1}), 400)
assert "nope" in unknown["message"], unknown
check(session.post(f"{base}/v1/auth/login", data="{", headers={"content-type": "application/json"}), 400)
check(session.get(f"{base}/v1/communities", headers=auth, params={"colour": "red"}), 400)

# 401 without a token, and with a forged one.
missing = session.get(f"{base}/v1/me")
check(missing, 401)
assert missing.headers["www-authenticate"] == "Bearer", missing.headers
check(session.get(f"{base}/v1/me", headers={"Authorization": "Bearer x.y.z"}), 401)

# 404 for a path no binding has, 405 for a verb the path does not take.
nothing = check(session.get(f"{base}/v1/nothing-here"), 404)
assert nothing["code"] == 5, nothing
wrong_verb = check(session.delete(f"{base}/v1/me", headers=auth), 405)
assert "GET" in session.delete(f"{base}/v1/me").headers["allow"]

# 429 from Login's quota (5 a minute, declared in users.proto), with Retry-After.
for attempt in range(20):
    response = session.post(f"{base}/v1/auth/login", json={"email": email, "password": "x" * 9})
    if response.status_code == 429:
        limited = check(response, 429)
        assert limited["code"] == 8, limited
        assert int(response.headers["retry-after"]) >= 1, response.headers
        break
    check(response, 401)  # wrong password
else:
    raise AssertionError("Login was never rate limited")

print("rest_client.py: ok")
