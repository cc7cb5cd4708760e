"""The simulator's admin HTTP API under ``/__sim/`` (JSON in, JSON out; never counted, never
rate-limited). Users, apps, teams and add-ons may be named by id, fixture handle or name::

    GET    /__sim/state                           everything but tokens and secrets
    POST   /__sim/users                           {email, name?, handle?}
    PATCH  /__sim/users/{user}                    {email}
    PATCH  /__sim/apps/{app}                      {name?, owner?}        rename / transfer
    POST   /__sim/apps/{app}/collaborators        {user, role?, permissions?}
    PATCH  /__sim/apps/{app}/collaborators/{user} {role?, permissions?}
    DELETE /__sim/apps/{app}/collaborators/{user}
    POST   /__sim/teams/{team}/members            {user, role?, identity_provider?}
    PATCH  /__sim/teams/{team}/members/{user}     {role, identity_provider?}
    DELETE /__sim/teams/{team}/members/{user}
    POST   /__sim/grants                          {resource_id, ttl?} -> {code}
    POST   /__sim/tokens/expire                   {resource_id?}
    POST   /__sim/tokens/revoke                   {resource_id}
    GET    /__sim/faults | POST {kind, path_prefix?, count?, seconds?, status?, retry_after?}
    DELETE /__sim/faults[/{id}]
    GET    /__sim/counters | DELETE (reset)
    GET    /__sim/rate-limits | DELETE (refill the pool) | PUT {remaining}
    GET    /__sim/manifest | PATCH {base_url?, sso_url?}
    POST   /__sim/provision                       {app, plan, name?, options?, resource_id?,
                                                   base_url?} -> {request, response, state}
    POST   /__sim/addons/{addon}/resend-provisioning {base_url?}
    PUT    /__sim/addons/{addon}/plan             {plan, base_url?, notify?}
    DELETE /__sim/addons/{addon}                  {base_url?, notify?}   deprovision
    GET    /__sim/webhooks                        subscriptions and deliveries (no secrets)
    GET    /__sim/sso/{addon}/{user}[?sso_url=]   HTML page that POSTs a signed SSO form
    GET    /__sim/sso/{addon}/{user}/form         the same form as JSON
    GET    /__sim/dashboard                       HTML: every app, its add-ons and people, with
                                                   an "Open" link per user and add-on
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from authz.devtools.heroku_sim.pages import dashboard_page

if TYPE_CHECKING:
    from authz.devtools.heroku_sim.simulator import HerokuSimulator


def admin(
    sim: HerokuSimulator, method: str, parts: list[str], doc: dict[str, Any], query: dict[str, str]
) -> tuple[int, Any]:
    """One admin call; raises LookupError (404) or ValueError/TypeError/KeyError (400)."""
    match method, parts:
        case "GET", ["state"]:
            return 200, sim.state()
        case "POST", ["users"]:
            user_id = sim.add_user(
                doc["email"], name=doc.get("name", ""), handle=doc.get("handle", "")
            )
            return 201, sim.user(user_id)
        case "PATCH", ["users", user]:
            sim.set_user_email(user, doc["email"])
            return 200, sim.user(user)
        case "PATCH", ["apps", app]:
            return 200, sim.update_app(app, name=doc.get("name"), owner=doc.get("owner"))
        case "POST", ["apps", app, "collaborators"]:
            reply = sim.add_collaborator(
                app, doc["user"], doc.get("role", "collaborator"), doc.get("permissions")
            )
            return 201, reply
        case "PATCH", ["apps", app, "collaborators", user]:
            return 200, sim.set_collaborator_role(
                app, user, doc.get("role"), doc.get("permissions")
            )
        case "DELETE", ["apps", app, "collaborators", user]:
            sim.remove_collaborator(app, user)
            return 200, {"removed": True}
        case "POST", ["teams", team, "members"]:
            return 201, sim.add_team_member(
                team, doc["user"], doc.get("role", "member"), doc.get("identity_provider")
            )
        case "PATCH", ["teams", team, "members", user]:
            return 200, sim.set_team_member_role(
                team, user, doc["role"], doc.get("identity_provider")
            )
        case "DELETE", ["teams", team, "members", user]:
            sim.remove_team_member(team, user)
            return 200, {"removed": True}
        case "POST", ["grants"]:
            rid = doc["resource_id"]
            return 201, {"code": sim.create_grant(rid, ttl=doc.get("ttl")), "resource_id": rid}
        case "POST", ["tokens", "expire"]:
            return 200, {"expired": sim.expire_access_tokens(doc.get("resource_id"))}
        case "POST", ["tokens", "revoke"]:
            return 200, {"revoked": sim.revoke_tokens(doc["resource_id"])}
        case "GET", ["faults"]:
            return 200, sim.faults()
        case "POST", ["faults"]:
            fault_id = sim.add_fault(
                doc["kind"],
                path_prefix=doc.get("path_prefix", ""),
                count=doc.get("count"),
                seconds=float(doc.get("seconds", 0.0)),
                status=doc.get("status"),
                retry_after=doc.get("retry_after"),
            )
            return 201, {"id": fault_id}
        case "DELETE", ["faults"]:
            return 200, {"cleared": sim.clear_faults()}
        case "DELETE", ["faults", fault_id]:
            return 200, {"cleared": sim.clear_faults(fault_id)}
        case "GET", ["counters"]:
            return 200, sim.counters()
        case "DELETE", ["counters"]:
            sim.reset_counters()
            return 200, sim.counters()
        case "GET", ["rate-limits"]:
            return 200, {"remaining": sim.rate_limit_remaining(), "limit": sim.rate_limit}
        case "DELETE", ["rate-limits"]:
            sim.reset_rate_limits()
            return 200, {"reset": True}
        case "PUT", ["rate-limits"]:
            sim.reset_rate_limits(int(doc["remaining"]))
            return 200, {"remaining": sim.rate_limit_remaining(), "limit": sim.rate_limit}
        case "GET", ["manifest"]:
            return 200, sim.manifest()
        case "PATCH", ["manifest"]:
            return 200, sim.set_manifest(base_url=doc.get("base_url"), sso_url=doc.get("sso_url"))
        case "POST", ["provision"]:
            return 201, sim.provision(
                doc["app"],
                doc["plan"],
                name=doc.get("name"),
                options=doc.get("options"),
                resource_id=doc.get("resource_id"),
                base_url=doc.get("base_url"),
            )
        case "POST", ["addons", addon, "resend-provisioning"]:
            return 200, sim.resend_provisioning(addon, base_url=doc.get("base_url"))
        case "PUT", ["addons", addon, "plan"]:
            return 200, sim.change_plan(
                addon, doc["plan"], base_url=doc.get("base_url"), notify=doc.get("notify", True)
            )
        case "DELETE", ["addons", addon]:
            return 200, sim.deprovision(
                addon, base_url=doc.get("base_url"), notify=doc.get("notify", True)
            )
        case "GET", ["webhooks"]:
            return 200, sim.webhook_state()
        case "GET", ["sso", addon, user, "form"]:
            return 200, sim.sso_form(addon, user)
        case "GET", ["sso", addon, user]:
            return 200, sim.sso_page(addon, user, sso_url=query.get("sso_url"))
        case "GET", ["dashboard"]:
            return 200, dashboard_page(sim.state(), sim.manifest().get("sso_url"))
    raise LookupError(f"no admin endpoint {method} /__sim/{'/'.join(parts)}")
