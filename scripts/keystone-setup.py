#!/usr/bin/env python3
"""Creates the service accounts the local servers need in the test Keystone (idempotent):
keystone-setup.py KEYSTONE_URL ADMIN_PASSWORD SERVICE_PASSWORD [ZAQAR_URL]

Project `service`; users `zaqar` (for the Keystone-protected Zaqar's keystonemiddleware)
and `herald` (Herald's own service user), each with the `service` role there, which
Keystone's default policy requires to validate other users' tokens. With ZAQAR_URL, Zaqar
in the catalog as OpenStack registers it: service `zaqar` of type `messaging`, public and
internal endpoints in RegionOne. Standard library only."""
import json
import sys
import urllib.error
import urllib.request

base, admin_password, service_password = sys.argv[1].rstrip("/") + "/v3", sys.argv[2], sys.argv[3]
zaqar_url = sys.argv[4] if len(sys.argv) > 4 else None


def call(method, path, token=None, body=None):
    request = urllib.request.Request(base + path, method=method, data=None if body is None else json.dumps(body).encode())
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("X-Auth-Token", token)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            data = response.read()
            return response.headers, json.loads(data) if data else None
    except urllib.error.HTTPError as error:
        sys.exit(f"keystone-setup: {method} {path} answered {error.code}: {error.read().decode()[:300]}")


headers, _ = call("POST", "/auth/tokens", body={"auth": {
    "identity": {"methods": ["password"], "password": {"user": {"name": "admin", "domain": {"id": "default"}, "password": admin_password}}},
    "scope": {"project": {"name": "admin", "domain": {"id": "default"}}},
}})
admin = headers["X-Subject-Token"]


def ensure(collection, name, body):
    _, found = call("GET", f"/{collection}?name={name}", admin)
    if found[collection]:
        return found[collection][0]["id"]
    _, created = call("POST", f"/{collection}", admin, {collection[:-1]: dict(body, name=name)})
    return created[collection[:-1]]["id"]


project = ensure("projects", "service", {"domain_id": "default", "description": "service users"})
role = ensure("roles", "service", {})
for user in ("zaqar", "herald"):
    user_id = ensure("users", user, {"domain_id": "default", "password": service_password})
    call("PUT", f"/projects/{project}/users/{user_id}/roles/{role}", admin)
print("keystone-setup: project service, users zaqar and herald with role service")
if zaqar_url:
    service = ensure("services", "zaqar", {"type": "messaging", "description": "Zaqar, OpenStack's messaging service"})
    for interface in ("public", "internal"):
        _, found = call("GET", f"/endpoints?service_id={service}&interface={interface}", admin)
        if not found["endpoints"]:
            call("POST", "/endpoints", admin, {"endpoint": {"service_id": service, "interface": interface, "url": zaqar_url, "region_id": "RegionOne"}})
        elif found["endpoints"][0]["url"] != zaqar_url:
            # The servers came up on other ports than when Keystone was first set up.
            call("PATCH", f"/endpoints/{found['endpoints'][0]['id']}", admin, {"endpoint": {"url": zaqar_url}})
    print(f"keystone-setup: zaqar (messaging) at {zaqar_url} in the catalog")
