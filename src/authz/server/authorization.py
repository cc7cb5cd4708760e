"""AuthorizationService: Check, CheckBatch and ListAllowedActions."""

from __future__ import annotations

from typing import Any

import grpc

from authz.decide import Decider, Item, Outcome, Subject, direct_subject
from authz.search import Asked, search_actions
from authz.server import convert
from authz.server.convert import BadRequest
from authz.server.errors import grpc_errors
from authz.server.identity import current_caller
from authz.v1 import authorization_pb2 as pb
from authz.v1 import authorization_pb2_grpc as pb_grpc


def caller_of(context: grpc.aio.ServicerContext) -> str:
    """The calling service's identity, as authenticated by `identity.CallerAdmission` for this
    call; "anonymous" in development mode, where callers are not authenticated."""
    return current_caller()


class AuthorizationServicer(pb_grpc.AuthorizationServiceServicer):
    def __init__(self, decider: Decider) -> None:
        self.decider = decider

    async def _subject(
        self, request: pb.CheckRequest | pb.CheckBatchRequest | pb.ListAllowedActionsRequest
    ) -> Subject:
        which = request.WhichOneof("subject")
        if which == "principal":
            return direct_subject(convert.entity(request.principal, "principal"))
        if which == "session_token":
            if len(request.session_token) > convert.MAX_ID:
                raise BadRequest("session_token is longer than any token authz issues")
            return await self.decider.subject_from_session(request.session_token)
        raise BadRequest("principal or session_token is required; name who is asking")

    async def _decide(
        self,
        context: grpc.aio.ServicerContext,
        subject: Subject,
        items: list[Item],
        request_context: dict[str, Any],
        request_id: str,
    ) -> list[Outcome]:
        policy_set = self.decider.policies.current
        convert.conforming(policy_set, subject.principal, [item.resource for item in items])
        return await self.decider.check(
            subject,
            items,
            context=request_context,
            request_id=request_id,
            caller=caller_of(context),
        )

    @grpc_errors
    async def Check(  # noqa: N802 (gRPC method name)
        self, request: pb.CheckRequest, context: grpc.aio.ServicerContext
    ) -> pb.CheckResponse:
        item = convert.check_item(request)
        subject = await self._subject(request)
        request_context = convert.struct_to_dict(request.context, "context")
        request_id = convert.request_id_of(request.request_id)
        outcomes = await self._decide(context, subject, [item], request_context, request_id)
        return convert.check_response(outcomes[0])

    @grpc_errors
    async def CheckBatch(  # noqa: N802
        self, request: pb.CheckBatchRequest, context: grpc.aio.ServicerContext
    ) -> pb.CheckBatchResponse:
        items = convert.batch_items(request)
        subject = await self._subject(request)
        request_context = convert.struct_to_dict(request.context, "context")
        request_id = convert.request_id_of(request.request_id)
        outcomes = await self._decide(context, subject, items, request_context, request_id)
        reply = pb.CheckBatchResponse()
        for outcome in outcomes:
            convert.check_response(outcome, reply.results.add())
        return reply

    @grpc_errors
    async def ListAllowedActions(  # noqa: N802
        self, request: pb.ListAllowedActionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListAllowedActionsResponse:
        """The allowed actions of one subject on one resource (authz.search.search_actions)."""
        if not request.HasField("resource"):
            raise BadRequest("resource is missing; send resource {type, id}")
        resource = convert.entity(request.resource, "resource")
        if len(request.actions) > convert.MAX_BATCH_ITEMS:
            raise BadRequest(
                f"actions has {len(request.actions)} entries; at most "
                f"{convert.MAX_BATCH_ITEMS}, or none for the whole action catalogue"
            )
        actions = [convert.action_of(a, f"actions[{i}]") for i, a in enumerate(request.actions)]
        subject = await self._subject(request)
        convert.conforming(self.decider.policies.current, subject.principal, [resource])
        asked = Asked(
            convert.struct_to_dict(request.context, "context"),
            convert.request_id_of(request.request_id),
            caller_of(context),
        )
        page = await search_actions(self.decider, subject, resource, asked, actions=actions)
        return pb.ListAllowedActionsResponse(
            actions=page.allowed,
            decisions=[
                pb.ActionDecision(
                    action=found.candidate, decision=convert.check_response(found.outcome)
                )
                for found in page.evaluated
            ],
        )
