/// The OpenAPI 3.1 document served at `/v1/openapi.json`. `OpenAPITests` checks that it
/// lists exactly the routes `HeraldAPI` serves and that each answers with a documented status.
package enum OpenAPIDocument {
    static let json = #"""
        {
          "openapi": "3.1.0",
          "info": {
            "title": "Herald",
            "version": "1",
            "description": "Subscriptions to OpenStack notifications, delivered into Zaqar queues. Every /v1 route acts for the caller's project: with HERALD_API_AUTH=keystone (the default) the project and roles of the Keystone token in X-Auth-Token; with HERALD_API_AUTH=trusted-header (development) the X-Project-Id header names it and X-Roles: admin makes the caller an admin."
          },
          "components": {
            "securitySchemes": {
              "keystoneToken": {"type": "apiKey", "in": "header", "name": "X-Auth-Token", "description": "A Keystone token scoped to a project."},
              "projectHeader": {"type": "apiKey", "in": "header", "name": "X-Project-Id", "description": "Development mode only."}
            },
            "parameters": {
              "id": {"name": "id", "in": "path", "required": true, "schema": {"type": "string"}},
              "limit": {"name": "limit", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}},
              "deadLetterLimit": {"name": "limit", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 100}},
              "marker": {"name": "marker", "in": "query", "required": false, "schema": {"type": "string"}, "description": "Where the page starts, from the previous page's next link."},
              "allProjects": {"name": "all_projects", "in": "query", "required": false, "schema": {"type": "boolean", "default": false}, "description": "The dead letters of the all-projects subscriptions instead of the caller's project's (policy dead_letter:all_projects, the cloud's admins by default)."}
            },
            "responses": {
              "BadRequest": {"description": "A bad field, named in the message.", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
              "Unauthorized": {"description": "No caller identity.", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
              "Forbidden": {"description": "The policy does not allow it for the caller's roles (GET /v1/policy).", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
              "TooManyRequests": {"description": "The project's rate for this is used up; Retry-After says when to try again.", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
              "NotFound": {"description": "None in the caller's project.", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
              "Conflict": {"description": "Other requests changed the subscription while this change was made (it is made again from the changed record, three times); send it again.", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
            },
            "schemas": {
              "Error": {
                "type": "object", "required": ["error"],
                "properties": {"error": {"type": "object", "required": ["message"], "properties": {"message": {"type": "string"}}}}
              },
              "Condition": {
                "type": "object", "required": ["field", "op"],
                "properties": {
                  "field": {"type": "string", "description": "payload.x.y, traits.name, publisher_id, event_type, ..."},
                  "op": {"type": "string", "enum": ["eq", "ne", "lt", "le", "gt", "ge", "in", "exists", "prefix"]},
                  "value": {}
                }
              },
              "SignedURL": {
                "type": "object", "required": ["expires", "methods", "paths", "project"],
                "properties": {
                  "signature": {"type": "string", "description": "Required in requests; never in answers (it lets whoever holds it post into the queue)."}, "expires": {"type": "string"},
                  "methods": {"type": "array", "items": {"type": "string"}}, "paths": {"type": "array", "items": {"type": "string"}},
                  "project": {"type": "string"}
                }
              },
              "Target": {
                "type": "object", "required": ["queue"],
                "properties": {
                  "queue": {"type": "string"},
                  "zaqar_url": {"type": "string", "description": "Defaults to the node's HERALD_ZAQAR_URL."},
                  "signed_url": {"$ref": "#/components/schemas/SignedURL"}
                }
              },
              "SubscriptionInput": {
                "type": "object", "additionalProperties": false,
                "properties": {
                  "event_types": {"type": "array", "items": {"type": "string"}, "description": "Globs (* and ?); a leading ! excludes."},
                  "conditions": {"type": "array", "items": {"$ref": "#/components/schemas/Condition"}},
                  "target": {"$ref": "#/components/schemas/Target"},
                  "message_ttl": {"type": "integer", "minimum": 60, "maximum": 1209600, "default": 3600},
                  "all_projects": {"type": "boolean", "default": false, "description": "Admin only."},
                  "project": {"type": "string", "description": "Admin only, when another than the caller's."},
                  "include_actor": {"type": "boolean", "default": false, "description": "Also the events this project caused on other projects' resources (matched by the acting project)."},
                  "resource_id": {"type": ["string", "null"], "description": "Only events about this resource (a server's uuid, a port's id, ...), as the event definitions find it."},
                  "origin": {"type": "string", "enum": ["notification", "ceilometer", "any"], "default": "any", "description": "The service's notification, the Ceilometer event built from it (same message id), or both."},
                  "unredacted": {"type": "boolean", "default": false, "description": "Admin only (policy subscription:unredacted), all-projects subscriptions only: the events with the fields OpenStack shows only to admins (hosts, port bindings, Ceilometer's raw notification), which every other subscription receives removed."},
                  "format": {"type": "string", "enum": ["herald", "cloudevents"], "default": "herald", "description": "Each message body: Herald's envelope ({event, herald}) or a CloudEvents 1.0 event in structured JSON mode (specversion, id = the notification's message id, source /openstack/<service>, type = the event type, time, subject = the resource id, data = the payload; extensions heraldsubscription, heraldpartition, heraldepoch, heraldproject, heraldactorproject, heraldredacted)."},
                  "trust": {"type": "boolean", "description": "Keystone mode: make a trust from the caller to Herald (role member on the caller's project), used to post into a Keystone-protected Zaqar and to renew the pre-signed URL. Default true unless target.signed_url is given."}
                }
              },
              "Subscription": {
                "type": "object",
                "required": ["id", "project", "all_projects", "event_types", "conditions", "target", "message_ttl", "created_at", "updated_at"],
                "properties": {
                  "id": {"type": "string"}, "project": {"type": "string"}, "all_projects": {"type": "boolean"},
                  "event_types": {"type": "array", "items": {"type": "string"}},
                  "conditions": {"type": "array", "items": {"$ref": "#/components/schemas/Condition"}},
                  "target": {"$ref": "#/components/schemas/Target"},
                  "message_ttl": {"type": "integer"}, "created_at": {"type": "number"}, "updated_at": {"type": "number"},
                  "trust_id": {"type": "string", "description": "The Keystone trust Herald made for this subscription; deleted with it."},
                  "include_actor": {"type": "boolean"}, "resource_id": {"type": "string"}, "origin": {"type": "string", "enum": ["notification", "ceilometer", "any"]},
                  "unredacted": {"type": "boolean"}, "format": {"type": "string", "enum": ["herald", "cloudevents"]},
                  "warnings": {"type": "array", "items": {"type": "string"}, "description": "What needs the subscriber, e.g. a pre-signed URL near expiry with no trust to renew it."}
                }
              },
              "Counts": {
                "type": "object", "required": ["matched", "delivered", "dead_lettered"],
                "properties": {"matched": {"type": "integer"}, "delivered": {"type": "integer"}, "dead_lettered": {"type": "integer"}}
              },
              "SubscriptionPage": {
                "type": "object", "required": ["subscriptions"],
                "properties": {"subscriptions": {"type": "array", "items": {"$ref": "#/components/schemas/Subscription"}}, "next": {"type": "string"}}
              },
              "AliasInput": {
                "type": "object", "required": ["source", "target"], "additionalProperties": false,
                "properties": {
                  "source": {"type": "string", "description": "An event type prefix, e.g. compute.instance."},
                  "target": {"type": "string", "description": "A queue name: my-events or zaqar://my-events."},
                  "message_ttl": {"type": "integer", "minimum": 60, "maximum": 1209600, "default": 3600}
                }
              },
              "AliasSubscription": {
                "type": "object", "required": ["id", "source", "target", "message_ttl", "project_id", "event_types"],
                "properties": {
                  "id": {"type": "string"}, "source": {"type": "string"}, "target": {"type": "string"}, "message_ttl": {"type": "integer"},
                  "project_id": {"type": "string"}, "event_types": {"type": "array", "items": {"type": "string"}}
                }
              },
              "AliasPage": {
                "type": "object", "required": ["subscriptions"],
                "properties": {"subscriptions": {"type": "array", "items": {"$ref": "#/components/schemas/AliasSubscription"}}, "next": {"type": "string"}}
              },
              "DeadLetter": {
                "type": "object", "required": ["id", "reason", "detail", "body", "at"],
                "properties": {
                  "id": {"type": "string"},
                  "reason": {"type": "string", "enum": ["rejected", "not_found", "signed_url_expired", "unauthorized", "too_large", "retries_exhausted", "malformed", "target_not_allowed", "retry_horizon", "parking_full"]},
                  "detail": {"type": "string"}, "http_status": {"type": "integer"}, "zaqar_message": {"type": "string"},
                  "target": {"type": "string"}, "subscription_id": {"type": "string"}, "event_id": {"type": "string"},
                  "project": {"type": "string"}, "body": {"type": "string"}, "body_truncated": {"type": "boolean"},
                  "all_projects": {"type": "boolean", "description": "A letter of an all-projects subscription (project is the admin project that made it)."},
                  "at": {"type": "number"}
                }
              },
              "DeadLetterPage": {
                "type": "object", "required": ["dead_letters"],
                "properties": {"dead_letters": {"type": "array", "items": {"$ref": "#/components/schemas/DeadLetter"}}, "next": {"type": "string"}}
              },
              "ReplayInput": {
                "type": "object", "required": ["ids"], "additionalProperties": false,
                "properties": {"ids": {"type": "array", "items": {"type": "string"}, "maxItems": 1000}}
              },
              "ReplayResult": {
                "type": "object", "required": ["replayed", "failed"],
                "properties": {
                  "replayed": {"type": "array", "items": {"type": "string"}},
                  "failed": {"type": "array", "items": {"type": "object", "required": ["id", "reason"], "properties": {"id": {"type": "string"}, "reason": {"type": "string"}}}}
                }
              },
              "Readiness": {
                "type": "object", "required": ["ready", "checks"],
                "properties": {"ready": {"type": "boolean"}, "checks": {"type": "object", "additionalProperties": {"type": "boolean"}}}
              }
            }
          },
          "paths": {
            "/healthz": {
              "get": {"summary": "The process is alive.", "responses": {"200": {"description": "Alive.", "content": {"application/json": {"schema": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}}}}}}}
            },
            "/readyz": {
              "get": {
                "summary": "Connected to Redis and RabbitMQ, registry loaded, membership current, not stopping.",
                "responses": {
                  "200": {"description": "Ready.", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Readiness"}}}},
                  "503": {"description": "Not ready; the failing checks are false.", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Readiness"}}}}
                }
              }
            },
            "/metrics": {
              "get": {"summary": "Prometheus text exposition (on HERALD_METRICS_PORT instead, and not here, when that is set).", "responses": {"200": {"description": "Metrics.", "content": {"text/plain": {"schema": {"type": "string"}}}}}}
            },
            "/v1/openapi.json": {
              "get": {"summary": "This document.", "responses": {"200": {"description": "OpenAPI 3.1.", "content": {"application/json": {"schema": {"type": "object"}}}}}}
            },
            "/v1/subscriptions": {
              "post": {
                "summary": "Subscribe the caller's project.", "security": [{"projectHeader": []}],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SubscriptionInput"}}}},
                "responses": {
                  "201": {"description": "Created.", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Subscription"}}}},
                  "400": {"$ref": "#/components/responses/BadRequest"}, "401": {"$ref": "#/components/responses/Unauthorized"}, "403": {"$ref": "#/components/responses/Forbidden"}
                }
              },
              "get": {
                "summary": "The caller's project's subscriptions, in id order.", "security": [{"projectHeader": []}],
                "parameters": [{"$ref": "#/components/parameters/limit"}, {"$ref": "#/components/parameters/marker"}],
                "responses": {
                  "200": {"description": "A page.", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SubscriptionPage"}}}},
                  "400": {"$ref": "#/components/responses/BadRequest"}, "401": {"$ref": "#/components/responses/Unauthorized"}
                }
              }
            },
            "/v1/subscriptions/{id}/delivery": {
              "parameters": [{"$ref": "#/components/parameters/id"}],
              "get": {
                "summary": "The subscription's health: how its target is doing (healthy, failing: since, last error; parked: messages waiting, oldest age, retries, next attempt, when they would be given up), events matched, delivered and dead-lettered in the last hour and in all, the last delivery, the last error (kept after recovery), and warnings.",
                "security": [{"projectHeader": []}],
                "responses": {
                  "200": {"description": "The state.", "content": {"application/json": {"schema": {"type": "object", "required": ["subscription_id", "state", "warnings"], "properties": {
                    "last_hour": {"$ref": "#/components/schemas/Counts"}, "total": {"$ref": "#/components/schemas/Counts"},
                    "last_delivered_at": {"type": "string", "format": "date-time"}, "recent_error": {"type": "string"}, "recent_error_at": {"type": "string", "format": "date-time"},
                    "warnings": {"type": "array", "items": {"type": "string"}},
                    "subscription_id": {"type": "string"}, "state": {"type": "string", "enum": ["healthy", "failing", "parked"]},
                    "since": {"type": "string", "format": "date-time"}, "last_error": {"type": "string"}, "next_attempt": {"type": "string", "format": "date-time"},
                    "attempts": {"type": "integer"}, "parked_messages": {"type": "integer"}, "oldest_parked_age_seconds": {"type": "number"},
                    "given_up_after": {"type": "string", "format": "date-time"}}}}}},
                  "401": {"$ref": "#/components/responses/Unauthorized"}, "404": {"$ref": "#/components/responses/NotFound"},
                  "503": {"description": "Redis cannot be read now."}
                }
              }
            },
            "/v1/event-types": {
              "get": {
                "summary": "The event types Herald has seen for the caller's project, most frequent first: count, last seen, and the latest event as the project's subscribers receive it (redacted). At most limit types per project.",
                "security": [{"projectHeader": []}],
                "responses": {
                  "200": {"description": "The types.", "content": {"application/json": {"schema": {"type": "object", "required": ["event_types", "limit"], "properties": {
                    "limit": {"type": "integer"},
                    "event_types": {"type": "array", "items": {"type": "object", "required": ["event_type", "count"], "properties": {
                      "event_type": {"type": "string"}, "count": {"type": "integer"}, "last_seen": {"type": "string", "format": "date-time"}, "sample": {}}}}}}}}},
                  "401": {"$ref": "#/components/responses/Unauthorized"}, "403": {"$ref": "#/components/responses/Forbidden"},
                  "503": {"description": "Redis cannot be read now."}
                }
              }
            },
            "/v1/feed": {
              "get": {
                "summary": "The project's feed: the subscription PUT /v1/feed made (id feed-...).", "security": [{"projectHeader": []}],
                "responses": {
                  "200": {"description": "The feed.", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Subscription"}}}},
                  "401": {"$ref": "#/components/responses/Unauthorized"}, "403": {"$ref": "#/components/responses/Forbidden"},
                  "404": {"description": "No feed; PUT /v1/feed turns it on.", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
                }
              },
              "put": {
                "summary": "Turn on (201) or change (200) the project's feed: every event of the project, or those of event_types, into one queue, without writing subscriptions. It lists among the subscriptions and counts against the quota.",
                "security": [{"projectHeader": []}],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {
                  "type": "object", "required": ["queue"], "additionalProperties": false,
                  "properties": {
                    "queue": {"type": "string", "description": "A Zaqar queue of the project, e.g. events."},
                    "event_types": {"type": "array", "items": {"type": "string"}, "default": ["*"]},
                    "format": {"type": "string", "enum": ["herald", "cloudevents"], "default": "herald"},
                    "message_ttl": {"type": "integer", "minimum": 60, "maximum": 1209600, "default": 3600}
                  }}}}},
                "responses": {
                  "200": {"description": "Changed.", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Subscription"}}}},
                  "201": {"description": "Turned on.", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Subscription"}}}},
                  "400": {"$ref": "#/components/responses/BadRequest"}, "401": {"$ref": "#/components/responses/Unauthorized"},
                  "403": {"$ref": "#/components/responses/Forbidden"}, "409": {"$ref": "#/components/responses/Conflict"},
                  "429": {"$ref": "#/components/responses/TooManyRequests"}
                }
              },
              "delete": {
                "summary": "Turn the project's feed off.", "security": [{"projectHeader": []}],
                "responses": {
                  "204": {"description": "Off."}, "401": {"$ref": "#/components/responses/Unauthorized"},
                  "403": {"$ref": "#/components/responses/Forbidden"}, "404": {"$ref": "#/components/responses/NotFound"}
                }
              }
            },
            "/v1/subscriptions/{id}/test": {
              "parameters": [{"$ref": "#/components/parameters/id"}],
              "post": {
                "summary": "Post one test event (event type herald.test, marked test in its payload, in the subscription's format) to the subscription's target with its credentials, and answer what the target said. HERALD_RATE_TESTS a minute per project.",
                "security": [{"projectHeader": []}],
                "responses": {
                  "200": {"description": "Sent or refused; delivered says which.", "content": {"application/json": {"schema": {"type": "object", "required": ["delivered", "event_id", "queue", "zaqar_url"], "properties": {
                    "delivered": {"type": "boolean"}, "event_id": {"type": "string", "description": "The test event's herald.event_id (a CloudEvent's id)."},
                    "queue": {"type": "string"}, "zaqar_url": {"type": "string"},
                    "status": {"type": "integer", "description": "Zaqar's HTTP status; absent when it did not answer."},
                    "error": {"type": "string", "description": "Why it was not delivered."}}}}}},
                  "401": {"$ref": "#/components/responses/Unauthorized"}, "403": {"$ref": "#/components/responses/Forbidden"},
                  "404": {"$ref": "#/components/responses/NotFound"}, "429": {"$ref": "#/components/responses/TooManyRequests"}
                }
              }
            },
            "/v1/subscriptions/{id}": {
              "parameters": [{"$ref": "#/components/parameters/id"}],
              "get": {
                "summary": "One subscription.", "security": [{"projectHeader": []}],
                "responses": {
                  "200": {"description": "Found.", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Subscription"}}}},
                  "401": {"$ref": "#/components/responses/Unauthorized"}, "404": {"$ref": "#/components/responses/NotFound"}
                }
              },
              "patch": {
                "summary": "Change the given fields.", "security": [{"projectHeader": []}],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SubscriptionInput"}}}},
                "responses": {
                  "200": {"description": "Updated.", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Subscription"}}}},
                  "400": {"$ref": "#/components/responses/BadRequest"}, "401": {"$ref": "#/components/responses/Unauthorized"},
                  "403": {"$ref": "#/components/responses/Forbidden"}, "404": {"$ref": "#/components/responses/NotFound"},
                  "409": {"$ref": "#/components/responses/Conflict"}, "429": {"$ref": "#/components/responses/TooManyRequests"}
                }
              },
              "delete": {
                "summary": "Unsubscribe.", "security": [{"projectHeader": []}],
                "responses": {"204": {"description": "Deleted."}, "401": {"$ref": "#/components/responses/Unauthorized"}, "404": {"$ref": "#/components/responses/NotFound"}}
              }
            },
            "/v1/subscription": {
              "post": {
                "summary": "The seed service's create: source is an event type prefix.", "security": [{"projectHeader": []}],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/AliasInput"}}}},
                "responses": {
                  "201": {"description": "Created.", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/AliasSubscription"}}}},
                  "400": {"$ref": "#/components/responses/BadRequest"}, "401": {"$ref": "#/components/responses/Unauthorized"}
                }
              },
              "get": {
                "summary": "The seed service's list.", "security": [{"projectHeader": []}],
                "parameters": [{"$ref": "#/components/parameters/limit"}, {"$ref": "#/components/parameters/marker"}],
                "responses": {
                  "200": {"description": "A page.", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/AliasPage"}}}},
                  "400": {"$ref": "#/components/responses/BadRequest"}, "401": {"$ref": "#/components/responses/Unauthorized"}
                }
              }
            },
            "/v1/subscription/{id}": {
              "parameters": [{"$ref": "#/components/parameters/id"}],
              "get": {
                "summary": "The seed service's show.", "security": [{"projectHeader": []}],
                "responses": {
                  "200": {"description": "Found.", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/AliasSubscription"}}}},
                  "401": {"$ref": "#/components/responses/Unauthorized"}, "404": {"$ref": "#/components/responses/NotFound"}
                }
              },
              "delete": {
                "summary": "The seed service's delete.", "security": [{"projectHeader": []}],
                "responses": {"204": {"description": "Deleted."}, "401": {"$ref": "#/components/responses/Unauthorized"}, "404": {"$ref": "#/components/responses/NotFound"}}
              }
            },
            "/v1/dead-letters": {
              "get": {
                "summary": "The caller's project's dead letters, newest first (or, with all_projects=true, those of the all-projects subscriptions).", "security": [{"projectHeader": []}],
                "parameters": [{"$ref": "#/components/parameters/deadLetterLimit"}, {"$ref": "#/components/parameters/marker"}, {"$ref": "#/components/parameters/allProjects"}],
                "responses": {
                  "200": {"description": "A page.", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/DeadLetterPage"}}}},
                  "400": {"$ref": "#/components/responses/BadRequest"}, "401": {"$ref": "#/components/responses/Unauthorized"}, "403": {"$ref": "#/components/responses/Forbidden"}
                }
              },
              "delete": {
                "summary": "Drop every dead letter of the caller's project (or, with all_projects=true, those of the all-projects subscriptions).", "security": [{"projectHeader": []}],
                "parameters": [{"$ref": "#/components/parameters/allProjects"}],
                "responses": {
                  "200": {"description": "How many were dropped.", "content": {"application/json": {"schema": {"type": "object", "required": ["purged"], "properties": {"purged": {"type": "integer"}}}}}},
                  "400": {"$ref": "#/components/responses/BadRequest"}, "401": {"$ref": "#/components/responses/Unauthorized"}, "403": {"$ref": "#/components/responses/Forbidden"}
                }
              }
            },
            "/v1/policy": {
              "get": {
                "summary": "The authorization rules in force (oslo.policy syntax): the defaults and which HERALD_POLICY_FILE changed.", "security": [{"projectHeader": []}],
                "responses": {
                  "200": {"description": "The rules.", "content": {"application/json": {"schema": {"type": "object", "required": ["rules"], "properties": {"rules": {"type": "array", "items": {"type": "object", "required": ["name", "rule", "description", "overridden"], "properties": {"name": {"type": "string"}, "rule": {"type": "string"}, "description": {"type": "string"}, "overridden": {"type": "boolean"}}}}}}}}},
                  "401": {"$ref": "#/components/responses/Unauthorized"}, "403": {"$ref": "#/components/responses/Forbidden"}
                }
              }
            },
            "/v1/dead-letters/replay": {
              "post": {
                "summary": "Post dead letters again to their subscription's current target: the given ids, or the newest 1000.", "security": [{"projectHeader": []}],
                "parameters": [{"$ref": "#/components/parameters/allProjects"}],
                "requestBody": {"required": false, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ReplayInput"}}}},
                "responses": {
                  "200": {"description": "What was replayed (and left the list) and what failed again.", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ReplayResult"}}}},
                  "400": {"$ref": "#/components/responses/BadRequest"}, "401": {"$ref": "#/components/responses/Unauthorized"}, "403": {"$ref": "#/components/responses/Forbidden"}, "404": {"$ref": "#/components/responses/NotFound"}
                }
              }
            }
          }
        }
        """#
}
