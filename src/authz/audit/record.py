"""A decision record: its type, validation, canonical JSON, the columns indexed for review,
shared parts.

`DecisionRecord` is what the decision path builds (once, in authz.decide) and what readers get
back (`DecisionRecord.from_dict` of a stored record). Its ``stage`` says whether the policies
were consulted (``"evaluated"``) or the request was refused before them (``"refused"``, with
the ``refusal_code`` such as ``SSO_REPLAYED`` or ``SESSION_UNKNOWN``); records written before
the field existed get it inferred once, here, from their reasons.

The record itself is stored verbatim as canonical JSON; the indexed columns are derived from it
(and `verify` checks that they still agree with it), so the JSON is the single source of truth.

What every record of a batch has in common (the principal with its attributes, the batch
context) is encoded and hashed once per batch and, when large, stored once as a *shared part*
(``audit_part``, keyed by the SHA-256 of its canonical JSON). Each record names its parts by
hash under ``"parts"`` (``{"input.principal": "<sha256>"}``), inside the chained JSON, so the
chain covers them and `verify` checks every part against its hash. `assemble` puts a record back
together for readers, exactly as it was before it was split.
"""

from __future__ import annotations

import functools
import hashlib
import json
import marshal
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from authz.audit.errors import AuditRecordInvalid
from authz.clock import Clock

EFFECTS = ("ALLOW", "DENY")

INDEX_COLUMNS = (
    "decision_id",
    "time",
    "kind",
    "caller",
    "request_id",
    "principal_type",
    "principal_id",
    "action",
    "resource_type",
    "resource_id",
    "app_id",
    "effect",
    "policy_revision",
    "rule_ids",
)
"""The columns of `audit_log` derived from the record, in this order."""

IndexRow = tuple[Any, ...]
RuleRow = tuple[str, str, str]
"""(policy, rule_id, effect) of one matched rule."""


_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
)
_NUMBER = (int, float)
_SEQUENCE = (list, tuple)


_ORJSON = (
    orjson.OPT_SORT_KEYS
    # Types the json module refuses go to it (orjson has no `default` here, so it raises).
    | orjson.OPT_PASSTHROUGH_SUBCLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
)
_SHORT_EXPONENT = re.compile(rb"e-[0-9](?:[,\]}]|\Z)")
"""Where orjson's text may differ from the json module's: a one-digit negative exponent (orjson
1e-7, json 1e-07); with ``0.0000`` (orjson 0.00001 from 1e-5 to 1e-4, json 1e-05), and ``null``
(orjson writes NaN and Infinity as null, and canonical JSON refuses them) found by plain search.
A match inside a string is only a false alarm: the json module encodes that value."""


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, ASCII only, no NaN/Infinity: one text per value.

    Floats use Python's shortest round-trip form, so json.loads(canonical_json(v)) == v for
    every JSON value and re-encoding gives the same text.

    The text is the json module's (`_ENCODER`), byte for byte, and what it refuses is refused
    (TypeError, ValueError), except that a uuid.UUID or a plain enum member is written as its
    value. orjson writes the text when it is certainly the same: ASCII without DEL (which json
    escapes), no float written differently, no null (tests/test_canonical_json.py).
    """
    try:
        text = orjson.dumps(value, option=_ORJSON)
    except TypeError:  # orjson.JSONEncodeError: a type, an integer or a depth it does not take
        return _ENCODER.encode(value)
    if (
        text.isascii()
        and b"\x7f" not in text
        and b"null" not in text
        and b"0.0000" not in text
        and _SHORT_EXPONENT.search(text) is None
    ):
        return text.decode("ascii")
    return _ENCODER.encode(value)


def chain_hash(prev_hash: str, seq: int, record_json: str) -> str:
    """The hash of chain entry `seq` whose canonical JSON is `record_json`, chained to
    `prev_hash`: sha256(prev_hash + canonical_json({"record": record, "seq": seq})), hex.

    '{"record":' + json + ',"seq":' + n + '}' is exactly the canonical JSON of
    {"record": record, "seq": n}, built without re-encoding the record.
    """
    content = '{"record":' + record_json + ',"seq":' + str(int(seq)) + "}"
    return hashlib.sha256((prev_hash + content).encode("utf-8")).hexdigest()


PARTS = "parts"
"""The record key naming its shared parts: {"input.<name>": sha256-hex}."""

PART_MIN_BYTES = 512
"""A shared value whose JSON is at least this long is stored once as a part; a smaller one is
copied into each record (a part costs a row, and a lookup for every reader)."""

_SHARED_PATH = re.compile(r"input\.([A-Za-z_][A-Za-z0-9_]*)")
_SHARED_NAMES = {"input.principal": "principal", "input.context": "context"}
"""The paths the decision path shares, known without a regex match."""
_PART_HASH = re.compile(r"[0-9a-f]{64}")


Stage = Literal["evaluated", "refused"]
STAGES: tuple[Stage, ...] = ("evaluated", "refused")

_RECORD_KEYS = frozenset(
    (
        "decision_id",
        "time",
        "kind",
        "stage",
        "refusal_code",
        "interface",
        "caller",
        "request_id",
        "principal",
        "action",
        "resource",
        "app_id",
        "effect",
        "matched_rules",
        "reasons",
        "errors",
        "policy_revision",
        "input",
        "duration_ms",
    )
)
_LEGACY_REFUSAL = re.compile(r"([A-Z][A-Z0-9]*_[A-Z0-9_]+):")
_DEFAULT_DENY_REASON = "no allow rule matched action"


@dataclass(frozen=True, slots=True)
class MatchedRule:
    """A rule whose condition held for the decision."""

    policy: str
    rule_id: str
    effect: str
    reason: str = ""

    def to_dict(self) -> dict[str, str]:
        return {
            "policy": self.policy,
            "rule_id": self.rule_id,
            "effect": self.effect,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """One decision as the audit log keeps it.

    ``principal`` and ``resource`` are the references shown in reviews (``type``, ``id``, and the
    principal's ``display``); ``input`` is everything the policies saw (with ``now`` as RFC 3339
    text), redacted. ``extra`` holds keys of a stored record this release does not know (a newer
    release wrote it), so that reading and writing back loses nothing.
    """

    decision_id: str
    time: float
    kind: str
    effect: str
    stage: Stage = "evaluated"
    refusal_code: str = ""
    interface: str = "grpc"
    caller: str = ""
    request_id: str = ""
    principal: Mapping[str, Any] = field(default_factory=dict)
    action: str = ""
    resource: Mapping[str, Any] = field(default_factory=dict)
    app_id: str = ""
    matched_rules: tuple[MatchedRule, ...] = ()
    reasons: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    policy_revision: str = ""
    input: Mapping[str, Any] = field(default_factory=dict)
    duration_ms: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def principal_ref(self) -> str:
        return f"{self.principal.get('type', '')}:{self.principal.get('id', '')}"

    @property
    def resource_ref(self) -> str:
        return f"{self.resource.get('type', '')}:{self.resource.get('id', '')}"

    @property
    def refused(self) -> bool:
        """Whether the request was refused before any policy was consulted."""
        return self.stage == "refused"

    @property
    def deciding_rules(self) -> tuple[MatchedRule, ...]:
        """The matched rules of the winning effect (none: a default deny or a refusal)."""
        return tuple(m for m in self.matched_rules if m.effect.upper() == self.effect)

    def to_dict(self) -> dict[str, Any]:
        """The record as stored (and hashed): plain JSON values."""
        return self._dict([m.to_dict() for m in self.matched_rules])

    def _dict(self, matched_rules: list[dict[str, str]]) -> dict[str, Any]:
        out: dict[str, Any] = {
            **self.extra,
            "decision_id": self.decision_id,
            "time": self.time,
            "kind": self.kind,
            "stage": self.stage,
            "interface": self.interface,
            "caller": self.caller,
            "request_id": self.request_id,
            "principal": self.principal,
            "action": self.action,
            "resource": self.resource,
            "app_id": self.app_id,
            "effect": self.effect,
            "matched_rules": matched_rules,
            "reasons": list(self.reasons),
            "errors": list(self.errors),
            "policy_revision": self.policy_revision,
            "input": self.input,
        }
        if self.refusal_code:
            out["refusal_code"] = self.refusal_code
        if self.duration_ms is not None:
            out["duration_ms"] = self.duration_ms
        return out

    def to_json(self) -> str:
        """The canonical JSON that is stored and hashed."""
        return _encode(self.to_dict(), f"audit record {self.decision_id}")

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> DecisionRecord:
        """A stored (or hand-built) record as a DecisionRecord; AuditRecordInvalid when it
        lacks what every record has (see `index_columns`). Fields of other types are read as
        text where review tools show them, so an odd record is still readable."""
        columns = index_columns(record)
        raw_rules = record.get("matched_rules") or ()
        rules = tuple(
            MatchedRule(
                str(r.get("policy") or ""),
                str(r.get("rule_id") or ""),
                str(r.get("effect") or ""),
                str(r.get("reason") or ""),
            )
            for r in raw_rules
            if isinstance(r, Mapping)
        )
        stage, code = _stage_of(record)
        duration = record.get("duration_ms")
        return cls(
            decision_id=columns[0],
            time=columns[1],
            kind=columns[2],
            effect=columns[11],
            stage=stage,
            refusal_code=code,
            interface=str(record.get("interface") or ""),
            caller=columns[3] or "",
            request_id=columns[4] or "",
            principal=_mapping(record.get("principal"), "principal"),
            action=columns[7] or "",
            resource=_mapping(record.get("resource"), "resource"),
            app_id=columns[10] or "",
            matched_rules=rules,
            reasons=tuple(str(r) for r in record.get("reasons") or ()),
            errors=tuple(str(e) for e in record.get("errors") or ()),
            policy_revision=columns[12] or "",
            input=_mapping(record.get("input"), "input"),
            duration_ms=(
                float(duration)
                if isinstance(duration, _NUMBER) and not isinstance(duration, bool)
                else None
            ),
            extra={k: v for k, v in record.items() if k not in _RECORD_KEYS},
        )


def refusal_code_of(reason: str) -> str:
    """``"SSO_REPLAYED: this form was used before"`` → ``"SSO_REPLAYED"`` ("" for other text)."""
    match = _LEGACY_REFUSAL.match(reason)
    return match.group(1) if match else ""


def _stage_of(record: Mapping[str, Any]) -> tuple[Stage, str]:
    """The stage and refusal code a record states, or, for a record written before they were
    recorded, what its reasons show: no rule matched and the reason is a refusal code rather
    than the engine's default deny (or the input has no access fact: it never reached them)."""
    stage = record.get("stage")
    if stage in STAGES:
        return stage, str(record.get("refusal_code") or "")
    if record.get("matched_rules"):
        return "evaluated", ""
    reasons = [str(r) for r in record.get("reasons") or ()]
    for reason in reasons:
        code = refusal_code_of(reason)
        if code:
            return "refused", code
    if reasons and not any(r.startswith(_DEFAULT_DENY_REASON) for r in reasons):
        return "refused", ""
    data = record.get("input")
    if isinstance(data, Mapping) and data and not isinstance(data.get("access"), Mapping):
        return "refused", ""
    return "evaluated", ""


@dataclass(frozen=True, slots=True)
class PreparedPart:
    """A shared value encoded and hashed once per batch: stored in audit_part under `hash`."""

    hash: str
    json: str


@dataclass(frozen=True, slots=True)
class PreparedRecord:
    """A record checked and encoded by the caller, ready for the writer to chain and insert."""

    decision_id: str
    columns: IndexRow
    rules: tuple[RuleRow, ...]
    json: str
    parts: tuple[PreparedPart, ...] = ()
    """The shared parts the record references (the same objects for every record of a batch)."""

    @property
    def caller(self) -> str:
        return self.columns[3] or ""


def _optional_str(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    raise AuditRecordInvalid(f"audit record field {field} must be a string, not {value!r}")


def _mapping(value: Any, field: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if isinstance(value, dict | Mapping):
        return value
    raise AuditRecordInvalid(f"audit record field {field} must be an object, not {value!r}")


def matched_rules(record: Mapping[str, Any]) -> tuple[RuleRow, ...]:
    raw = record.get("matched_rules") or ()
    if not isinstance(raw, _SEQUENCE):
        raise AuditRecordInvalid(f"audit record field matched_rules must be a list, not {raw!r}")
    rules: list[RuleRow] = []
    for i, item in enumerate(raw):
        rule = item if type(item) is dict else _mapping(item, f"matched_rules[{i}]")
        rule_id = rule.get("rule_id")
        if not isinstance(rule_id, str) or not rule_id:
            raise AuditRecordInvalid(f"audit record matched_rules[{i}] has no rule_id")
        policy = _optional_str(rule.get("policy"), f"matched_rules[{i}].policy") or ""
        effect = _optional_str(rule.get("effect"), f"matched_rules[{i}].effect") or ""
        rules.append((str(policy), str(rule_id), str(effect)))
    return tuple(rules)


def index_columns(record: Mapping[str, Any], rules: tuple[RuleRow, ...] | None = None) -> IndexRow:
    """The values of INDEX_COLUMNS for a record; raises AuditRecordInvalid when it is malformed.

    `rules` is matched_rules(record) when the caller already has it.
    """
    decision_id = record.get("decision_id")
    if not isinstance(decision_id, str) or not decision_id:
        raise AuditRecordInvalid("audit record needs a decision_id (a non-empty string)")
    time = record.get("time")
    if isinstance(time, bool) or not isinstance(time, _NUMBER) or not math.isfinite(time):
        raise AuditRecordInvalid(f"audit record {decision_id}: time must be Unix seconds")
    kind = record.get("kind")
    if not isinstance(kind, str) or not kind:
        raise AuditRecordInvalid(f"audit record {decision_id}: kind must be a non-empty string")
    effect = record.get("effect")
    if effect not in EFFECTS:
        raise AuditRecordInvalid(f"audit record {decision_id}: effect must be ALLOW or DENY")
    principal = record.get("principal")
    if type(principal) is not dict:
        principal = _mapping(principal, "principal")
    resource = record.get("resource")
    if type(resource) is not dict:
        resource = _mapping(resource, "resource")
    if rules is None:
        rules = matched_rules(record)
    return (
        decision_id,
        float(time),
        kind,
        _optional_str(record.get("caller"), "caller"),
        _optional_str(record.get("request_id"), "request_id"),
        _optional_str(principal.get("type"), "principal.type"),
        _optional_str(principal.get("id"), "principal.id"),
        _optional_str(record.get("action"), "action"),
        _optional_str(resource.get("type"), "resource.type"),
        _optional_str(resource.get("id"), "resource.id"),
        _optional_str(record.get("app_id"), "app_id"),
        str(effect),
        _optional_str(record.get("policy_revision"), "policy_revision"),
        canonical_json([rule_id for _, rule_id, _ in rules]),
    )


def _encode(value: Any, what: str) -> str:
    try:
        return canonical_json(value)
    except (TypeError, ValueError) as exc:
        raise AuditRecordInvalid(f"{what} is not plain JSON: {exc}") from None


@dataclass(frozen=True, slots=True)
class _Rules:
    """What the audit log makes of one tuple of matched rules (`_rules_of`)."""

    dicts: list[dict[str, str]]
    """As stored; shared by the records being encoded, so never handed to a caller."""
    rows: tuple[RuleRow, ...]
    ids_json: str


@functools.lru_cache(maxsize=4096)  # tuples built per record (hand-made records): bounded
def _rules_of(matched: tuple[MatchedRule, ...]) -> _Rules:
    """Made once for every record that holds the same rules (a decision's records do:
    authz.decide). Callers pass a tuple (`tuple()` of one is free), as the cache hashes it."""
    return _Rules(
        [m.to_dict() for m in matched],
        tuple((m.policy, m.rule_id, m.effect) for m in matched),
        canonical_json([m.rule_id for m in matched]) if matched else "[]",
    )


def _prepare_typed(
    record: DecisionRecord,
    parts: tuple[PreparedPart, ...] = (),
    inline: Mapping[str, Any] | None = None,
    refs: Mapping[str, str] | None = None,
) -> PreparedRecord:
    """A DecisionRecord is valid by construction: its columns come from its fields, and only
    its JSON is encoded (once), with its batch's shared values (`_share_into`) if any. Its
    matched rules' dicts, rows and ids are those of every record holding the same rules."""
    _check_typed(record)
    rules = _rules_of(tuple(record.matched_rules))
    stored = record._dict(rules.dicts)
    if inline or refs:
        stored = _share_into(stored, inline or {}, refs or {})
    principal, resource = record.principal, record.resource
    columns = (
        record.decision_id,
        float(record.time),
        record.kind,
        record.caller,
        record.request_id,
        principal.get("type"),
        principal.get("id"),
        record.action,
        resource.get("type"),
        resource.get("id"),
        record.app_id,
        record.effect,
        record.policy_revision,
        rules.ids_json,
    )
    text = _encode(stored, f"audit record {record.decision_id}")
    return PreparedRecord(record.decision_id, columns, rules.rows, text, parts)


def _check_typed(record: DecisionRecord) -> None:
    if not record.decision_id:
        raise AuditRecordInvalid("audit record needs a decision_id (a non-empty string)")
    if record.effect not in EFFECTS:
        raise AuditRecordInvalid(f"audit record {record.decision_id}: effect must be ALLOW or DENY")
    if record.stage not in STAGES:
        raise AuditRecordInvalid(
            f"audit record {record.decision_id}: stage must be one of {STAGES}"
        )


def prepare(
    record: Mapping[str, Any] | DecisionRecord,
    clock: Clock,
    parts: tuple[PreparedPart, ...] = (),
) -> PreparedRecord:
    """Check and encode a record in the caller, so a bad record never poisons a shared commit.

    A record without "time" is stamped with `clock()`; the caller's dict is never modified.
    `parts` are the shared parts its "parts" key names (see `prepare_many`).
    """
    if isinstance(record, DecisionRecord):
        return _prepare_typed(record, parts)
    if not isinstance(record, dict | Mapping):
        raise AuditRecordInvalid(f"an audit record is a dict, not {type(record).__name__}")
    if "time" not in record:
        record = {**record, "time": clock()}
    rules = matched_rules(record)
    columns = index_columns(record, rules)
    text = _encode(record, f"audit record {columns[0]}")
    return PreparedRecord(columns[0], columns, rules, text, parts)


def shared_name(path: str) -> str:
    """ "input.principal" → "principal"; AuditRecordInvalid for any other kind of path."""
    name = _SHARED_NAMES.get(path) if isinstance(path, str) else None
    if name is not None:
        return name
    match = _SHARED_PATH.fullmatch(path) if isinstance(path, str) else None
    if match is None:
        raise AuditRecordInvalid(
            f"shared path {path!r} must name a key of the record's input, like 'input.context'"
        )
    return match.group(1)


_ABSENT: Any = object()


def overlay(shared: Any, own: Any = _ABSENT) -> Any:
    """A record's value at a shared path: the shared value, with the record's own object (when
    both are objects) taking precedence key by key, or the record's own value instead."""
    if own is _ABSENT:
        return shared
    if type(shared) is dict and type(own) is dict:
        return {**shared, **own}
    return own


def _with_shared(
    record: Mapping[str, Any], inline: Mapping[str, Any], refs: Mapping[str, str]
) -> dict[str, Any]:
    return _share_into(dict(record), inline, refs)


def _share_into(
    out: dict[str, Any], inline: Mapping[str, Any], refs: Mapping[str, str]
) -> dict[str, Any]:
    """A record's own dict (`out`, changed) with its batch's shared values inline or named."""
    if PARTS in out:
        raise AuditRecordInvalid(f"audit record key {PARTS!r} is reserved for shared parts")
    own = out.get("input")
    merged = dict(own if type(own) is dict else _mapping(own, "input"))
    for name, value in inline.items():
        merged[name] = overlay(value, merged.get(name, _ABSENT))
    out["input"] = merged
    if refs:
        out[PARTS] = refs
    return out


def prepare_many(
    records: Iterable[Mapping[str, Any] | DecisionRecord],
    clock: Clock,
    shared: Mapping[str, Any] | None = None,
) -> list[PreparedRecord]:
    """`prepare` for the records of one batch, with what they share stored once.

    shared: values every record has in common, by path ("input.principal", "input.context");
    a record's own value at such a path overlays the shared one (see `overlay`), or is left out
    when the shared value is the whole of it. Each shared value is encoded and hashed once;
    one of PART_MIN_BYTES or more becomes a part the records reference by hash, a smaller one
    is copied into each record. Either way `assemble` gives back the same records.
    """
    inline: dict[str, Any] = {}
    refs: dict[str, str] = {}
    parts: list[PreparedPart] = []
    if not isinstance(records, list | tuple):
        records = list(records)
    single = len(records) == 1
    for path, value in (shared or {}).items():
        name = shared_name(path)
        if single and _clearly_small(value):
            # One record shares nothing within its batch: a small value goes inline without
            # being encoded on its own first (the record's encoding checks it).
            inline[name] = value
            continue
        text = _encode(value, f"shared {path}")
        if len(text) < PART_MIN_BYTES:
            inline[name] = value
            continue
        part = PreparedPart(hashlib.sha256(text.encode("ascii")).hexdigest(), text)
        refs[path] = part.hash
        parts.append(part)
    if not inline and not refs:
        return [prepare(record, clock) for record in records]
    held = tuple(parts)
    out: list[PreparedRecord] = []
    for record in records:
        if isinstance(record, DecisionRecord):
            out.append(_prepare_typed(record, held, inline, refs))
        else:
            out.append(prepare(_with_shared(record, inline, refs), clock, held))
    return out


def _clearly_small(value: Any) -> bool:
    """Whether a value's JSON is well under PART_MIN_BYTES, judged by its marshal form (one
    pass in C; the JSON of plain values is rarely half as long again). A misjudged value
    is only stored inline instead of as a part: readers get the same record either way."""
    try:
        return len(marshal.dumps(value)) * 3 < PART_MIN_BYTES * 2
    except ValueError:  # a type marshal does not know: encode it to find out
        return False


def part_refs(record: Mapping[str, Any]) -> dict[str, str]:
    """The shared parts a stored record names ({path: hash}); AuditRecordInvalid if malformed."""
    refs = record.get(PARTS)
    if refs is None:
        return {}
    if type(refs) is not dict:
        raise AuditRecordInvalid(f"{PARTS} must be an object, not {refs!r}")
    for path, digest in refs.items():
        shared_name(path)
        if not isinstance(digest, str) or not _PART_HASH.fullmatch(digest):
            raise AuditRecordInvalid(f"{PARTS}[{path!r}] is not a SHA-256 hex digest")
    return refs


def part_hash(part_json: str) -> str:
    """The hash a stored part must have: the SHA-256 of its canonical JSON."""
    return hashlib.sha256(part_json.encode("utf-8")).hexdigest()


def assemble(record: dict[str, Any], part: Callable[[str], Any]) -> dict[str, Any]:
    """The record as it was before its shared parts were split off; `part(hash)` gives the
    decoded value of a part. A record without parts (any record written before parts existed)
    is returned as it is."""
    refs = part_refs(record)
    if not refs:
        return record
    out = {key: value for key, value in record.items() if key != PARTS}
    own = out.get("input")
    merged = dict(own) if type(own) is dict else {}
    for path, digest in refs.items():
        name = shared_name(path)
        merged[name] = overlay(part(digest), merged.get(name, _ABSENT))
    out["input"] = merged
    return out


def prune_entry(
    *,
    time: float,
    through: tuple[int, str],
    previous: tuple[int, str] | None,
    **details: Any,
) -> dict[str, Any]:
    """The chain entry a prune appends: it removes the entries up to `through` (seq, hash) and
    names the prune entry before it (`previous`, its seq and hash), so prunes form a chain of
    their own inside the hash chain."""
    return {
        "event": "prune",
        "time": time,
        "through": {"seq": through[0], "hash": through[1]},
        "previous": None if previous is None else {"seq": previous[0], "hash": previous[1]},
        **details,
    }
