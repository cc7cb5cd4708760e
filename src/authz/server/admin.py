"""AdminService: the add-on registry, access invalidation, policy reload and audit queries."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from authz.facts.addons import Addon, AddonRegistry, RegistryError
from authz.facts.sessions import SessionStore
from authz.policies_runtime import PolicyHolder
from authz.server.convert import EFFECT_TO_PROTO, PROTO_TO_EFFECT, dict_to_struct, timestamp
from authz.server.errors import abort
from authz.v1 import admin_pb2 as pb
from authz.v1 import admin_pb2_grpc as pb_grpc
from authz.v1 import authorization_pb2 as authz_pb

MAX_QUERY_LIMIT = 10_000


def addon_message(addon: Addon, has_tokens: bool) -> pb.Addon:
    return pb.Addon(
        resource_id=addon.resource_id,
        app_id=addon.app_id,
        app_name=addon.app_name,
        plan=addon.plan,
        region=addon.region,
        state=addon.state,
        created_at=timestamp(addon.created_at),
        updated_at=timestamp(addon.updated_at),
        has_oauth_tokens=has_tokens,
    )


class AdminServicer(pb_grpc.AdminServiceServicer):
    def __init__(
        self,
        *,
        policies: PolicyHolder,
        registry: AddonRegistry,
        sessions: SessionStore,
        invalidations: Any = None,  # facts.invalidation.AccessInvalidations
        tokens: Any = None,  # facts.oauth_tokens.TokenManager
        token_store: Any = None,  # facts.oauth_tokens.OAuthTokenStore
        audit_path: Any = None,  # Path of the audit database, for queries
    ) -> None:
        self.policies = policies
        self.registry = registry
        self.sessions = sessions
        self.invalidations = invalidations
        self.tokens = tokens
        self.token_store = token_store
        self.audit_path = audit_path

    def _has_tokens(self, resource_id: str) -> bool:
        return self.token_store is not None and self.token_store.has(resource_id)

    async def RegisterAddon(  # noqa: N802 (gRPC method name)
        self, request: pb.RegisterAddonRequest, context: grpc.aio.ServicerContext
    ) -> pb.RegisterAddonResponse:
        try:
            addon, changed = self.registry.register(
                request.resource_id, request.app_id, request.app_name, request.plan, request.region
            )
        except RegistryError as exc:
            code = (
                grpc.StatusCode.INVALID_ARGUMENT
                if exc.invalid_argument
                else grpc.StatusCode.FAILED_PRECONDITION
            )
            await abort(context, code, exc.message, exc.code)
        if request.oauth_grant_code:
            # The grant expires minutes after provisioning: exchange it now, never store it.
            if self.tokens is None:
                await abort(
                    context,
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "an oauth_grant_code was sent but no Platform API client is configured "
                    "(set AUTHZ_HEROKU_CLIENT_SECRET and AUTHZ_TOKEN_KEY)",
                    "OAUTH_NOT_CONFIGURED",
                )
            try:
                await self.tokens.register_grant(addon.resource_id, request.oauth_grant_code)
            except Exception as exc:  # the message of PlatformError never holds a secret
                await abort(
                    context,
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"the add-on was registered but its OAuth grant could not be exchanged: {exc}",
                    "OAUTH_GRANT_FAILED",
                )
            changed = True
        return pb.RegisterAddonResponse(
            addon=addon_message(addon, self._has_tokens(addon.resource_id)), changed=changed
        )

    async def DeprovisionAddon(  # noqa: N802
        self, request: pb.DeprovisionAddonRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeprovisionAddonResponse:
        try:
            addon = self.registry.deprovision(request.resource_id)
        except RegistryError as exc:
            code = (
                grpc.StatusCode.INVALID_ARGUMENT
                if exc.invalid_argument
                else grpc.StatusCode.NOT_FOUND
            )
            await abort(context, code, exc.message, exc.code)
        revoked = self.sessions.revoke_for_resource(addon.resource_id)
        if self.token_store is not None:
            # Heroku's grant ends with the add-on: its Platform API tokens must not outlive it.
            # Runs again when Heroku repeats the DELETE, so a failure here is retried with it.
            self.token_store.delete(addon.resource_id)
        if self.invalidations is not None:
            await self.invalidations.publish(addon.app_id)
        return pb.DeprovisionAddonResponse(
            addon=addon_message(addon, self._has_tokens(addon.resource_id)),
            sessions_revoked=revoked,
        )

    async def InvalidateAccess(  # noqa: N802
        self, request: pb.InvalidateAccessRequest, context: grpc.aio.ServicerContext
    ) -> pb.InvalidateAccessResponse:
        if not request.app_id:
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "app_id is empty; send the Heroku app id whose access list changed",
            )
        dropped = (
            await self.invalidations.publish(request.app_id)
            if self.invalidations is not None
            else False
        )
        return pb.InvalidateAccessResponse(dropped=dropped)

    async def ReloadPolicies(  # noqa: N802
        self, request: pb.ReloadPoliciesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReloadPoliciesResponse:
        result = await asyncio.to_thread(self.policies.reload)
        return pb.ReloadPoliciesResponse(
            reloaded=result.reloaded, policy_revision=result.revision, errors=result.errors
        )

    async def GetPolicyStatus(  # noqa: N802
        self, request: pb.GetPolicyStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetPolicyStatusResponse:
        current = self.policies.current
        return pb.GetPolicyStatusResponse(
            policy_revision=current.revision,
            loaded_at=timestamp(current.loaded_at),
            policy_count=len(current.policies),
            rule_count=current.rule_count,
            policy_dir=str(self.policies.directory),
            last_refused_at=timestamp(self.policies.last_refused_at),
            last_refused_errors=self.policies.last_refused_errors,
        )

    async def QueryDecisions(  # noqa: N802
        self, request: pb.QueryDecisionsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.QueryDecisionsResponse]:
        from authz.audit.errors import AuditLogNotFound, AuditTampered, AuditUnavailable
        from authz.audit.query import aiter_query

        if request.limit < 0 or request.limit > MAX_QUERY_LIMIT:
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"limit must be between 0 and {MAX_QUERY_LIMIT}",
            )
        filters: dict[str, Any] = {
            "since": request.since.ToNanoseconds() / 1e9 if request.HasField("since") else None,
            "until": request.until.ToNanoseconds() / 1e9 if request.HasField("until") else None,
            "principal": request.principal or None,
            "resource": request.resource or None,
            "app": request.app or None,
            "action": request.action or None,
            "effect": effect.value if (effect := PROTO_TO_EFFECT.get(request.effect)) else None,
            "rule": request.rule or None,
            "limit": request.limit or 100,
        }
        # Streamed: a chunk of records is read at a time and each is sent as it is built, so
        # memory holds one chunk however many (and however large) the records are.
        records = aiter_query(self.audit_path, **filters)
        try:
            async for rec in records:
                yield _decision_message(rec)
        except AuditLogNotFound:
            await abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                "there is no audit log to query (AUTHZ_AUDIT_MODE=off keeps none)",
                "AUDIT_LOG_MISSING",
            )
        except AuditTampered as exc:  # a record's shared part is missing
            await abort(context, grpc.StatusCode.DATA_LOSS, str(exc), "AUDIT_LOG_TAMPERED")
        except AuditUnavailable as exc:
            await abort(context, grpc.StatusCode.UNAVAILABLE, str(exc), "AUDIT_LOG_UNAVAILABLE")
        finally:
            await records.aclose()


def _decision_message(rec: dict[str, Any]) -> pb.QueryDecisionsResponse:
    return pb.QueryDecisionsResponse(
        decision_id=rec["decision_id"],
        time=timestamp(rec["time"]),
        effect=EFFECT_TO_PROTO.get(rec["effect"], authz_pb.EFFECT_UNSPECIFIED),
        action=rec["action"],
        principal=f"{rec['principal']['type']}:{rec['principal']['id']}",
        resource=f"{rec['resource']['type']}:{rec['resource']['id']}",
        app_id=rec.get("app_id", ""),
        policy_revision=rec["policy_revision"],
        matched_rules=[
            authz_pb.MatchedRule(
                policy=m["policy"],
                rule_id=m["rule_id"],
                effect=EFFECT_TO_PROTO[m["effect"]],
                reason=m["reason"],
            )
            for m in rec.get("matched_rules", [])
        ],
        record=dict_to_struct(rec),
    )
