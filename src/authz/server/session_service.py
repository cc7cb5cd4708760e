"""SessionService: Heroku SSO exchange and logout (authz.login does the work)."""

from __future__ import annotations

import grpc

from authz.errors import Refusal
from authz.login import SsoLogins
from authz.offload import offload
from authz.server import convert
from authz.server.authorization import caller_of
from authz.server.convert import BadRequest
from authz.server.errors import grpc_errors
from authz.v1 import session_pb2 as pb
from authz.v1 import session_pb2_grpc as pb_grpc

MAX_FORM_FIELDS = 32


class SessionServicer(pb_grpc.SessionServiceServicer):
    def __init__(self, logins: SsoLogins) -> None:
        self.logins = logins

    @grpc_errors
    async def ExchangeSso(  # noqa: N802 (gRPC method name)
        self, request: pb.ExchangeSsoRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExchangeSsoResponse:
        try:
            if len(request.form) > MAX_FORM_FIELDS:
                raise BadRequest(f"form has {len(request.form)} fields; Heroku sends fewer than 16")
            request_id = convert.request_id_of(request.request_id)
        except BadRequest as exc:
            raise Refusal("SSO_MALFORMED", str(exc), invalid_argument=True) from None
        result = await self.logins.exchange(
            dict(request.form), request_id=request_id, caller=caller_of(context)
        )
        return pb.ExchangeSsoResponse(
            session_token=result.token,
            expires_at=convert.timestamp(result.session.expires_at),
            principal_id=result.session.user_id,
            resource_id=result.session.resource_id,
            decision_id=result.decision_id,
        )

    @grpc_errors
    async def RevokeSession(  # noqa: N802
        self, request: pb.RevokeSessionRequest, context: grpc.aio.ServicerContext
    ) -> pb.RevokeSessionResponse:
        if not request.session_token:
            raise BadRequest("session_token is empty; send the token ExchangeSso returned")
        revoked = await offload(self.logins.sessions.revoke, request.session_token)
        return pb.RevokeSessionResponse(revoked=revoked)
