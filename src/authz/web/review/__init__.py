"""The audit review pages: read-only HTML on the HTTP listener, for reviewers only.

    GET  /audit                           decisions, newest first, filtered, a page at a time
    GET  /audit/decisions/{decision_id}   one decision explained
    GET  /audit/stats                     charts: over time, top denied, deny rate per revision
    GET  /audit/verify                    the hash chain's state, and exports of a filtered set
    GET  /audit/export.csv, .jsonl        exactly the filtered set, streamed, no row cap
    GET  /audit/login, POST /audit/login, POST /audit/logout
    GET  /audit/static/{name}             the stylesheet and the copy button's script

Who may read them, and how they log in: authz.web.review.access. The queries:
authz.audit.browse. No page changes anything but the login cookie. Every answer under /audit,
errors included, carries SECURITY_HEADERS (a Content-Security-Policy allowing only this
listener's own stylesheet and script, forms posting only here, no framing). Every page a
reviewer views is logged on the `authz.audit.review` logger, one structured line (reviewer,
page, path and query, status, request id): the review of the log is itself on the record
wherever the service's log goes (AUTHZ_LOG_FORMAT=json or logfmt for a log drain).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from authz.audit import browse
from authz.audit.browse import AuditError, AuditLogNotFound, VerifyReport, canonical_json
from authz.clock import utc
from authz.policy.compile import CompiledPolicySet
from authz.web.errors import HttpError
from authz.web.review import charts
from authz.web.review.access import (
    Reviewer,
    ReviewerGate,
    check_same_origin,
    clear_cookie,
    safe_next,
    set_cookie,
)
from authz.web.routing import Guard, RouteGroup, WebParts, request_id

log = logging.getLogger("authz.audit.review")

PREFIX = "/audit"
HERE = Path(__file__).parent
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; "
        "connect-src 'none'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # no-referrer would make forms send Origin: null
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}
VERIFY_FRESH = 60.0
"""Seconds a verification of the whole chain stands before a page view starts another."""
VERIFY_WAIT = 3.0
"""Seconds a verify page waits for a verification it started before showing "running"."""

T = TypeVar("T")
Page = Callable[[Request, Reviewer], Awaitable[Response]]


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        # A record written by an older version may lack a field a page shows: it shows empty.
        undefined=jinja2.ChainableUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    env.filters["ago"] = _ago
    env.filters["pretty"] = lambda value: json.dumps(value, indent=2, sort_keys=True)
    return env


def _when(ts: float | None) -> str:
    if ts is None:
        return ""
    return utc(ts).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.1f} s"


@dataclass
class RuleSources:
    """Where each rule was written (file:line), by policy revision: records name their
    revision, and a rule's line at that revision is known for the revision loaded now and those
    this process saw loaded when it started or when a review page was opened."""

    by_revision: dict[str, dict[str, str]] = field(default_factory=dict)
    keep: int = 64
    """Revisions remembered at most (the oldest are forgotten first)."""

    def remember(self, policies: CompiledPolicySet) -> None:
        if policies.revision not in self.by_revision:
            self.by_revision[policies.revision] = {
                f"{c.rule.policy}/{c.rule.id}": str(c.rule.source) for c in policies.rules
            }
            while len(self.by_revision) > self.keep:
                del self.by_revision[next(iter(self.by_revision))]

    def source(self, revision: str, policy: str, rule_id: str) -> str | None:
        return self.by_revision.get(revision, {}).get(f"{policy}/{rule_id}")


@dataclass
class ChainCheck:
    """The latest verification of the whole chain; at most one runs at a time."""

    report: VerifyReport | None = None
    finished_at: float | None = None
    took: float = 0.0
    error: str = ""
    running: asyncio.Task[None] | None = None
    started_at: float | None = None

    async def fresh(self, target: Any) -> None:
        stale = self.finished_at is None or time.time() - self.finished_at > VERIFY_FRESH
        if stale and (self.running is None or self.running.done()):
            self.started_at = time.time()
            self.running = asyncio.ensure_future(self._run(target))
        if self.running is not None and not self.running.done():
            await asyncio.wait({self.running}, timeout=VERIFY_WAIT)

    async def _run(self, target: Any) -> None:
        started = time.perf_counter()
        try:
            self.report = await _in_daemon_thread(browse.verify_chain, target)
            self.error = ""
        except AuditError as exc:
            self.error = str(exc)
        except Exception as exc:  # shown on the page; the chain's state is then unknown
            log.exception("audit review: verifying the chain failed")
            self.error = f"verification failed ({type(exc).__name__}); the server log says why"
        self.took = time.perf_counter() - started
        self.finished_at = time.time()


async def _in_daemon_thread(fn: Callable[..., T], *args: Any) -> T:
    """fn(*args) in a thread of its own that does not hold up the process's exit: walking a
    large chain takes long, only reads, and is not worth delaying a shutdown for (the default
    executor's threads are waited for when the loop ends)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[], object]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
            loop.call_soon_threadsafe(lambda: future.done() or outcome())

    def run() -> None:
        try:
            result = fn(*args)
        except BaseException as exc:  # handed to the awaiting task
            error = exc
            settle(lambda: future.set_exception(error))
            return
        settle(lambda: future.set_result(result))

    threading.Thread(target=run, name="authz-review-verify", daemon=True).start()
    return await future


class Review:
    """The pages of one service: its audit log, its policies, who may read."""

    def __init__(self, parts: WebParts) -> None:
        self.parts = parts
        self.target = parts.audit.target
        self.gate = ReviewerGate(parts.settings, parts.callers)
        self.templates = _environment()
        self.sources = RuleSources()
        self.sources.remember(parts.policies.current)
        self.chain = ChainCheck()
        self.static = {
            path.name: path.read_bytes()
            for path in (HERE / "static").iterdir()
            if path.suffix in STATIC_TYPES
        }

    # -- plumbing ------------------------------------------------------------------------------

    def html(self, request: Request, template: str, status: int = 200, **values: Any) -> Response:
        body = self.templates.get_template(template).render(
            prefix=PREFIX,
            development=self.gate.development,
            request_id=request_id(request),
            reviewer=values.pop("reviewer", None),
            **values,
        )
        return HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)

    def render_error(self, status: int, message: str, headers: Mapping[str, str]) -> Response:
        body = self.templates.get_template("error.html").render(
            prefix=PREFIX,
            development=self.gate.development,
            request_id="",
            reviewer=None,
            status=status,
            message=message,
        )
        return HTMLResponse(body, status_code=status, headers={**headers, **SECURITY_HEADERS})

    def login_page(
        self, request: Request, status: int = 401, message: str = "", next_: str = ""
    ) -> Response:
        target = next_ or request.url.path + (f"?{request.url.query}" if request.url.query else "")
        response = self.html(
            request,
            "login.html",
            status,
            message=message,
            next=safe_next(target),
            by_token=self.gate.login_by_token,
        )
        if status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="authz"'
        return response

    def page(self, path: str, handler: Page, name: str) -> Route:
        """A route for reviewers: identified, admitted, counted among the callers' requests
        in flight, and logged."""

        async def endpoint(request: Request) -> Response:
            self.sources.remember(self.parts.policies.current)
            guard: Guard = request.app.state.guard
            reviewer = self.gate.identify(request)
            if reviewer is None:
                return self.login_page(request)
            try:
                self.gate.admit(reviewer)
            except HttpError:
                self._log_view(request, reviewer, name, 403)
                raise
            guard.callers_budget.take()
            try:
                response = await handler(request, reviewer)
            finally:
                guard.callers_budget.give_back()
            self._log_view(request, reviewer, name, response.status_code)
            return response

        return Route(path, endpoint, methods=["GET"], name=f"review-{name}")

    def _log_view(self, request: Request, reviewer: Reviewer, page: str, status: int) -> None:
        fields = {
            "reviewer": reviewer.name,
            "authenticated_by": reviewer.how,
            "page": page,
            "path": request.url.path,
            "query": request.url.query,
            "status": status,
            "request_id": request_id(request),
        }
        level = logging.INFO if status < 400 else logging.WARNING
        log.log(level, "audit review page viewed", extra={"fields": fields})

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """A read of the log in a thread; a log that is missing or unreadable is 503."""
        try:
            return await asyncio.to_thread(fn, *args)
        except AuditLogNotFound as exc:
            raise HttpError(503, f"there is no audit log to review yet: {exc}") from None
        except AuditError as exc:
            raise HttpError(503, f"the audit log cannot be read: {exc}") from None

    def filters(self, request: Request) -> browse.Filters:
        try:
            return browse.Filters.parse(request.query_params, time.time())
        except ValueError as exc:
            raise HttpError(400, f"{exc}; correct the filter and search again") from None

    # -- pages ---------------------------------------------------------------------------------

    async def decisions(self, request: Request, reviewer: Reviewer) -> Response:
        filters = self.filters(request)
        after = request.query_params.get("after", "")
        try:
            cursor = browse.Cursor.parse(after) if after else None
        except ValueError as exc:
            raise HttpError(400, str(exc)) from None
        page = await self.read(browse.list_page, self.target, filters, cursor)
        query = filters.params()
        return self.html(
            request,
            "decisions.html",
            reviewer=reviewer,
            filters=filters,
            values=query,
            page=page,
            first=cursor is None,
            next_url=(f"{PREFIX}?{urlencode({**query, 'after': str(page.next)})}")
            if page.next
            else "",
            first_url=f"{PREFIX}?{urlencode(query)}" if query else PREFIX,
            export_query=urlencode(query),
        )

    async def decision(self, request: Request, reviewer: Reviewer) -> Response:
        decision_id = request.path_params["decision_id"]
        entry = await self.read(browse.explain, self.target, decision_id)
        if entry is None:
            raise HttpError(
                404,
                f"no decision {decision_id!r} in the audit log (it may have been pruned); "
                "check the id",
            )
        record = entry.record
        revision = str(record.get("policy_revision") or "")
        rules = [
            {
                **rule,
                "source": self.sources.source(
                    revision, str(rule.get("policy", "")), str(rule.get("rule_id", ""))
                ),
            }
            for rule in record.get("matched_rules") or []
            if isinstance(rule, dict)
        ]
        inputs = record.get("input") if isinstance(record.get("input"), dict) else {}
        access = inputs.get("access") if isinstance(inputs, dict) else None
        access_age = None
        if isinstance(access, dict) and isinstance(access.get("age_seconds"), int | float):
            access_age = float(access["age_seconds"])
        return self.html(
            request,
            "decision.html",
            reviewer=reviewer,
            entry=entry,
            record=record,
            rules=rules,
            revision=revision,
            revision_known=revision in self.sources.by_revision,
            current_revision=self.parts.policies.current.revision,
            inputs=inputs,
            access=access,
            access_age=access_age,
            record_json=json.dumps(record, indent=2, sort_keys=True),
            canonical_size=len(canonical_json(record)),
        )

    async def stats(self, request: Request, reviewer: Reviewer) -> Response:
        now = time.time()
        params = dict(request.query_params)
        params.setdefault("since", "24h")
        filters = self._range(params, now)
        bucket = params.get("bucket") or "hour"
        since = filters.since if filters.since is not None else now - 86400
        until = filters.until if filters.until is not None else now
        try:
            numbers = await self.read(browse.stats, self.target, since, until, bucket)
        except ValueError as exc:
            raise HttpError(400, f"{exc}") from None
        revision_rates = [
            (f"{rev[:12] or '(none)'} ({denied}/{total} denied)", total)
            for rev, _, total, denied in numbers.revisions
        ]
        return self.html(
            request,
            "stats.html",
            reviewer=reviewer,
            stats=numbers,
            values={"since": params["since"], "until": params.get("until", ""), "bucket": bucket},
            buckets=list(browse.BUCKETS),
            over_time=charts.over_time(numbers.series, bucket, "chart-over-time"),
            top_actions=charts.bars(numbers.top_actions, "Most denied actions", "chart-actions"),
            top_principals=charts.bars(
                numbers.top_principals, "Most denied principals", "chart-principals"
            ),
            top_callers=charts.bars(numbers.top_callers, "Most denied callers", "chart-callers"),
            revisions=charts.bars(
                revision_rates,
                "Deny rate per policy revision",
                "chart-revisions",
                css="rate",
                fractions=[d / t if t else 0.0 for _, _, t, d in numbers.revisions],
            ),
            link=lambda **extra: f"{PREFIX}?{urlencode(extra)}",
            since_text=_when(since),
            until_text=_when(until),
        )

    def _range(self, params: Mapping[str, str], now: float) -> browse.Filters:
        try:
            return browse.Filters.parse(
                {k: v for k, v in params.items() if k in ("since", "until")}, now
            )
        except ValueError as exc:
            raise HttpError(400, f"{exc}; correct the range") from None

    async def verify(self, request: Request, reviewer: Reviewer) -> Response:
        filters = self.filters(request)
        await self.chain.fresh(self.target)
        query = filters.params()
        return self.html(
            request,
            "verify.html",
            reviewer=reviewer,
            chain=self.chain,
            now=time.time(),
            values=query,
            export_query=urlencode(query),
        )

    async def export_csv(self, request: Request, reviewer: Reviewer) -> Response:
        filters = self.filters(request)

        def lines() -> Iterator[str]:
            yield browse.csv_line(browse.CSV_HEADER)
            for row in browse.export_rows(self.target, filters):
                yield browse.csv_line(row.csv_values())

        return await self._stream(lines, "text/csv; charset=utf-8", "csv")

    async def export_jsonl(self, request: Request, reviewer: Reviewer) -> Response:
        filters = self.filters(request)

        def lines() -> Iterator[str]:
            for record in browse.export_records(self.target, filters):
                yield canonical_json(record) + "\n"

        return await self._stream(lines, "application/x-ndjson", "jsonl")

    async def _stream(
        self, lines: Callable[[], Iterator[str]], media_type: str, suffix: str
    ) -> Response:
        """Stream `lines()` (blocking reads) from a thread of its own, a chunk at a time. The
        first chunk is read before answering, so a log that cannot be read is an error page
        rather than a cut-off download."""
        source = lines()
        reader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="authz-review-export")
        loop = asyncio.get_running_loop()

        def chunk() -> str:
            out: list[str] = []
            size = 0
            for line in source:
                out.append(line)
                size += len(line)
                if size >= 1 << 16:
                    break
            return "".join(out)

        try:
            first = await loop.run_in_executor(reader, chunk)
        except AuditLogNotFound as exc:
            reader.submit(source.close)
            reader.shutdown(wait=False)
            raise HttpError(503, f"there is no audit log to export yet: {exc}") from None
        except BaseException:
            reader.submit(source.close)
            reader.shutdown(wait=False)
            raise

        async def body() -> AsyncIterator[str]:
            try:
                text = first
                while text:
                    yield text
                    text = await loop.run_in_executor(reader, chunk)
            finally:
                reader.submit(source.close)  # after any read still running in that thread
                reader.shutdown(wait=False)

        stamp = utc(time.time()).strftime("%Y%m%dT%H%M%SZ")
        headers = {
            **SECURITY_HEADERS,
            "Content-Disposition": f'attachment; filename="authz-audit-{stamp}.{suffix}"',
        }
        return StreamingResponse(body(), media_type=media_type, headers=headers)

    # -- login, logout, static -----------------------------------------------------------------

    async def login_form(self, request: Request) -> Response:
        guard: Guard = request.app.state.guard
        guard.open_budget.take()
        try:
            return self.login_page(
                request, status=200, next_=request.query_params.get("next", PREFIX)
            )
        finally:
            guard.open_budget.give_back()

    async def login(self, request: Request) -> Response:
        guard: Guard = request.app.state.guard
        guard.open_budget.take()
        try:
            check_same_origin(request)
            form = dict(parse_qsl((await request.body()).decode("utf-8", "replace"),
                                  max_num_fields=4))  # fmt: skip
            target = safe_next(form.get("next", PREFIX))
            try:
                cookie = self.gate.login(form.get("token", ""))
            except HttpError as refused:
                log.warning(
                    "audit review login refused",
                    extra={"fields": {"status": refused.status_code,
                                      "request_id": request_id(request)}},
                )  # fmt: skip
                return self.login_page(
                    request, refused.status_code, str(refused.detail), next_=target
                )
            name = self.gate.cookie_name(cookie) or ""
            log.info(
                "audit review login",
                extra={"fields": {"reviewer": name, "request_id": request_id(request)}},
            )
            response = RedirectResponse(target, status_code=303, headers=SECURITY_HEADERS)
            set_cookie(response, request, cookie)
            return response
        finally:
            guard.open_budget.give_back()

    async def logout(self, request: Request) -> Response:
        check_same_origin(request)
        response = RedirectResponse(f"{PREFIX}/login", status_code=303, headers=SECURITY_HEADERS)
        clear_cookie(response, request)
        return response

    async def static_file(self, request: Request) -> Response:
        name = request.path_params["name"]
        body = self.static.get(name)
        if body is None:
            raise HttpError(404, f"no static file {name!r}")
        headers = {**SECURITY_HEADERS, "Cache-Control": "max-age=3600"}
        return Response(body, media_type=STATIC_TYPES[Path(name).suffix], headers=headers)


def routes(parts: WebParts) -> RouteGroup:
    review = Review(parts)
    pages = [
        review.page(PREFIX, review.decisions, "decisions"),
        review.page(f"{PREFIX}/decisions/{{decision_id}}", review.decision, "decision"),
        review.page(f"{PREFIX}/stats", review.stats, "stats"),
        review.page(f"{PREFIX}/verify", review.verify, "verify"),
        review.page(f"{PREFIX}/export.csv", review.export_csv, "export-csv"),
        review.page(f"{PREFIX}/export.jsonl", review.export_jsonl, "export-jsonl"),
        Route(f"{PREFIX}/login", review.login_form, methods=["GET"]),
        Route(f"{PREFIX}/login", review.login, methods=["POST"]),
        Route(f"{PREFIX}/logout", review.logout, methods=["POST"]),
        Route(f"{PREFIX}/static/{{name}}", review.static_file, methods=["GET"]),
    ]
    return RouteGroup("review", pages, prefix=PREFIX, render_error=review.render_error)
