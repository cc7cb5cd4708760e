"""AdminService: the add-on lifecycle (authz.provisioning), access invalidation, policy reload
and audit queries. Handlers convert, call the use case and convert back; domain errors become
statuses in one table (authz.server.errors)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from authz.policy.holder import PolicyHolder
from authz.provisioning import AddonStatus, Provisioning, ProvisioningRequest
from authz.server.convert import (
    EFFECT_TO_PROTO,
    PROTO_TO_EFFECT,
    BadRequest,
    dict_to_struct,
    timestamp,
)
from authz.server.errors import abort, grpc_errors
from authz.v1 import admin_pb2 as pb
from authz.v1 import admin_pb2_grpc as pb_grpc
from authz.v1 import authorization_pb2 as authz_pb

MAX_QUERY_LIMIT = 10_000


def addon_message(status: AddonStatus) -> pb.Addon:
    addon = status.addon
    return pb.Addon(
        resource_id=addon.resource_id,
        app_id=addon.app_id,
        app_name=addon.app_name,
        plan=addon.plan,
        region=addon.region,
        state=addon.state,
        created_at=timestamp(addon.created_at),
        updated_at=timestamp(addon.updated_at),
        has_oauth_tokens=status.has_oauth_tokens,
        webhook_subscribed=status.webhook_subscribed,
    )


class AdminServicer(pb_grpc.AdminServiceServicer):
    def __init__(
        self,
        *,
        policies: PolicyHolder,
        provisioning: Provisioning,
        audit_path: Path | str | None = None,
    ) -> None:
        self.policies = policies
        self.provisioning = provisioning
        self.audit_path = audit_path

    @grpc_errors
    async def RegisterAddon(  # noqa: N802 (gRPC method name)
        self, request: pb.RegisterAddonRequest, context: grpc.aio.ServicerContext
    ) -> pb.RegisterAddonResponse:
        registered = await self.provisioning.register(
            ProvisioningRequest(
                resource_id=request.resource_id,
                plan=request.plan,
                region=request.region,
                oauth_grant_code=request.oauth_grant_code,
                name=request.name,
                callback_url=request.callback_url,
                options=dict(request.options),
                app_id=request.app_id,
                app_name=request.app_name,
            )
        )
        return pb.RegisterAddonResponse(
            addon=addon_message(registered.status), changed=registered.changed
        )

    @grpc_errors
    async def ChangePlan(  # noqa: N802
        self, request: pb.ChangePlanRequest, context: grpc.aio.ServicerContext
    ) -> pb.ChangePlanResponse:
        status = await self.provisioning.change_plan(request.resource_id, request.plan)
        return pb.ChangePlanResponse(addon=addon_message(status))

    @grpc_errors
    async def DeprovisionAddon(  # noqa: N802
        self, request: pb.DeprovisionAddonRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeprovisionAddonResponse:
        gone = await self.provisioning.deprovision(request.resource_id)
        return pb.DeprovisionAddonResponse(
            addon=addon_message(gone.status), sessions_revoked=gone.sessions_revoked
        )

    @grpc_errors
    async def InvalidateAccess(  # noqa: N802
        self, request: pb.InvalidateAccessRequest, context: grpc.aio.ServicerContext
    ) -> pb.InvalidateAccessResponse:
        if not request.app_id:
            raise BadRequest("app_id is empty; send the Heroku app id whose access list changed")
        return pb.InvalidateAccessResponse(
            dropped=await self.provisioning.invalidate(request.app_id)
        )

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
