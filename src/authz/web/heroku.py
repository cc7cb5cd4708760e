"""Heroku's side of authz over HTTP: the partner's provisioning calls, and signed webhooks.

    POST   /heroku/resources          Heroku's v3 provisioning body, verbatim       (admins)
    PUT    /heroku/resources/{uuid}   Heroku's plan-change body {"plan": ...}       (admins)
    DELETE /heroku/resources/{uuid}   Heroku's deprovisioning                       (admins)
    POST   /heroku/webhooks/{uuid}    Heroku's webhook deliveries for that add-on   (open)

**Forwarded, not called by Heroku.** Heroku sends provisioning, plan changes and deprovisioning
to the one ``base_url`` of the add-on manifest (Dev Center "Add-on Partner API Reference"), and
waits there for the partner's own answer: the resource's ``id``, the ``config`` vars to set on
the customer's app, a ``message``. authz is not the partner's provisioning service and can give
none of that, and taking Heroku's calls itself would mean keeping the manifest's API password,
which can provision and deprovision every add-on. So the partner's handler checks Heroku's Basic
credentials, does its own work, and forwards Heroku's body (and the uuid of the path) here,
verbatim, with its own authz caller token; it answers Heroku 2xx only when both succeeded, so
that Heroku retries (or reports a failed provisioning) otherwise. The paths mirror Heroku's
(``{base_url}`` and ``{base_url}/{uuid}``), so forwarding is a change of host.

**Webhooks** come from Heroku directly (authz subscribes them at provisioning, see
authz.facts.webhooks), on an open route: a delivery is authenticated by its
``Heroku-Webhook-Hmac-SHA256`` signature under the add-on's secret, or refused with 401 before
anything is done. An accepted delivery is answered 204 at once and acted on afterwards
(authz.provisioning); a repeat of an accepted event is answered 204 too, and ignored.

Errors are the listener's JSON shape with the domain error's stable code beside the message:
``{"error": {"status": 409, "message": "...", "reason": "ADDON_DEPROVISIONED"}}``.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from authz.errors import AuthzError, Refusal
from authz.facts.webhooks import RECEIVER_PATH, SIGNATURE_HEADER
from authz.provisioning import AddonStatus, Provisioning, ProvisioningRequest
from authz.server.errors import status_for
from authz.web.auth import Access
from authz.web.routing import Handler, RouteGroup, WebParts, route

RESOURCES_PATH = "/heroku/resources"


def routes(parts: WebParts) -> RouteGroup:
    provisioning = parts.provisioning
    if provisioning is None:
        return RouteGroup("heroku", [])
    lifecycle: Provisioning = provisioning

    async def provision(request: Request, caller: str) -> Response:
        registered = await lifecycle.register(ProvisioningRequest.from_heroku(await _json(request)))
        body = {**_addon_json(registered.status), "changed": registered.changed}
        return JSONResponse(body, status_code=201 if registered.changed else 200)

    async def change_plan(request: Request, caller: str) -> Response:
        body = await _json(request)
        plan = body.get("plan") if isinstance(body, dict) else None
        if not isinstance(plan, str):
            raise Refusal(
                "PROVISIONING_MALFORMED",
                'the body must be Heroku\'s plan change, {"plan": "<plan>"}',
                invalid_argument=True,
            )
        status = await lifecycle.change_plan(request.path_params["resource_id"], plan)
        return JSONResponse(_addon_json(status))

    async def deprovision(request: Request, caller: str) -> Response:
        gone = await lifecycle.deprovision(request.path_params["resource_id"])
        return JSONResponse({**_addon_json(gone.status), "sessions_revoked": gone.sessions_revoked})

    async def webhook(request: Request, caller: str) -> Response:
        signatures = request.headers.getlist(SIGNATURE_HEADER)
        await lifecycle.receive(
            request.path_params["resource_id"],
            await request.body(),
            signatures[0] if len(signatures) == 1 else None,
        )
        return Response(status_code=204)

    return RouteGroup(
        "heroku",
        [
            route(RESOURCES_PATH, _answering(provision), access=Access.ADMIN, methods=["POST"]),
            route(
                RESOURCES_PATH + "/{resource_id}",
                _answering(change_plan),
                access=Access.ADMIN,
                methods=["PUT"],
            ),
            route(
                RESOURCES_PATH + "/{resource_id}",
                _answering(deprovision),
                access=Access.ADMIN,
                methods=["DELETE"],
            ),
            route(
                RECEIVER_PATH + "/{resource_id}",
                _answering(webhook),
                access=Access.OPEN,
                methods=["POST"],
            ),
        ],
    )


def _answering(handler: Handler) -> Handler:
    """Domain errors as JSON errors, by the one table (authz.server.errors)."""

    async def answer(request: Request, caller: str) -> Response:
        try:
            return await handler(request, caller)
        except AuthzError as exc:
            status = status_for(exc)
            headers = {}
            if status.http == 401:  # RFC 9110: a 401 names how to authenticate
                headers["WWW-Authenticate"] = f'{SIGNATURE_HEADER} realm="authz"'
            body = {"status": status.http, "message": status.message, "reason": status.reason}
            return JSONResponse({"error": body}, status_code=status.http, headers=headers)

    answer.__name__ = handler.__name__
    return answer


async def _json(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except ValueError:
        raise Refusal(
            "PROVISIONING_MALFORMED",
            "the body is not JSON; forward Heroku's request body as it came",
            invalid_argument=True,
        ) from None


def _addon_json(status: AddonStatus) -> dict[str, Any]:
    addon = status.addon
    return {
        "resource_id": addon.resource_id,
        "app": {"id": addon.app_id, "name": addon.app_name},
        "plan": addon.plan,
        "region": addon.region,
        "state": addon.state,
        "has_oauth_tokens": status.has_oauth_tokens,
        "webhook_subscribed": status.webhook_subscribed,
    }
