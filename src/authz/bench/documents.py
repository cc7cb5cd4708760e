"""The policy of the Cerbos comparison (issue 19), written once for each server, and the
plain-Python oracle that both servers must agree with.

Documents belong to a team and an owner and carry a classification; principals hold roles
(admin, editor, viewer) and the attributes team, department and suspended:

- read: members of the document's team, and anyone for a public document;
- edit: the document's owner, and editors of its team;
- share: the document's owner;
- admins may read, edit, share and delete any document;
- denies override every allow: a suspended principal may do nothing; a locked document is for
  admins only; a confidential document is never shared, and only its owner and the legal
  department read or edit it;
- any other action (``archive``) no rule allows: default deny.

authz reads the roles from ``principal.attributes.roles``, since its principals carry roles as
attributes; Cerbos has a roles field. Every principal and document carries every attribute, so
no condition of either server ever meets a missing attribute (the two treat those differently).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESOURCE_KIND = "document"
PRINCIPAL_TYPE = "user"
ROLES = ("viewer", "editor", "admin")
TEAMS = ("red", "blue")
DEPARTMENTS = ("engineering", "legal")
CLASSIFICATIONS = ("public", "internal", "confidential", "locked")
ACTIONS = ("read", "edit", "share", "delete", "archive")


@dataclass(frozen=True, slots=True)
class Person:
    id: str
    roles: tuple[str, ...]
    team: str
    department: str
    suspended: bool

    def attributes(self) -> dict[str, Any]:
        """Principal attributes as authz receives them (roles included)."""
        return {
            "roles": list(self.roles),
            "team": self.team,
            "department": self.department,
            "suspended": self.suspended,
        }


@dataclass(frozen=True, slots=True)
class Document:
    id: str
    owner: str
    team: str
    classification: str

    def attributes(self) -> dict[str, Any]:
        return {"owner": self.owner, "team": self.team, "classification": self.classification}


def oracle(person: Person, document: Document, action: str) -> bool:
    """The policy in plain Python: what both servers must answer."""
    admin = "admin" in person.roles
    if person.suspended:
        return False
    if document.classification == "locked" and not admin:
        return False
    if document.classification == "confidential":
        if action == "share":
            return False
        if (
            action in ("read", "edit")
            and person.id != document.owner
            and person.department != "legal"
        ):
            return False
    if admin and action in ("read", "edit", "share", "delete"):
        return True
    if action == "read":
        return person.team == document.team or document.classification == "public"
    if action == "edit":
        team_editor = "editor" in person.roles and person.team == document.team
        return person.id == document.owner or team_editor
    if action == "share":
        return person.id == document.owner
    return False


# -- the grid of principals × documents × actions both servers are checked on -----------------


def people() -> list[Person]:
    """Every combination of role, team, department and suspension: 24 principals."""
    out: list[Person] = []
    for role in ROLES:
        for team in TEAMS:
            for department in DEPARTMENTS:
                for suspended in (False, True):
                    out.append(Person(f"user-{len(out):02d}", (role,), team, department, suspended))
    return out


def documents(owners: list[Person]) -> list[Document]:
    """Every classification for each team, three documents each: 24 documents. Owners are spread
    so that every principal owns exactly one document (5 and 24 are coprime)."""
    out: list[Document] = []
    for classification in CLASSIFICATIONS:
        for team in TEAMS:
            for _ in range(3):
                owner = owners[(5 * len(out) + 3) % len(owners)]
                out.append(Document(f"doc-{len(out):02d}", owner.id, team, classification))
    return out


@dataclass(frozen=True)
class Grid:
    people: list[Person]
    documents: list[Document]

    def __len__(self) -> int:
        return len(self.people) * len(self.documents) * len(ACTIONS)

    def cases(self) -> Iterator[tuple[Person, Document, str]]:
        for person in self.people:
            for document in self.documents:
                for action in ACTIONS:
                    yield person, document, action


def grid() -> Grid:
    """24 principals × 24 documents × 5 actions = 2,880 decisions."""
    everyone = people()
    return Grid(everyone, documents(everyone))


@dataclass(frozen=True, slots=True)
class Disagreement:
    server: str
    principal: str
    document: str
    action: str
    got: bool
    expected: bool


def disagreements(
    server: str, answers: dict[tuple[str, str, str], bool], cases: Grid
) -> list[Disagreement]:
    """Every (principal, document, action) whose answer differs from the oracle's, or is
    missing (a missing answer counts as a disagreement: it was never checked)."""
    out: list[Disagreement] = []
    for person, document, action in cases.cases():
        expected = oracle(person, document, action)
        got = answers.get((person.id, document.id, action))
        if got is None or got != expected:
            out.append(Disagreement(server, person.id, document.id, action, bool(got), expected))
    return out


# -- the load generator's requests --------------------------------------------------------------

# One editor of the red team asking about red and blue documents, none of which it owns.
BENCH_PERSON = Person("bench-editor", ("editor",), "red", "engineering", False)
BENCH_DOCUMENTS = (
    Document("bench-internal-red", "someone-else", "red", "internal"),
    Document("bench-public-blue", "someone-else", "blue", "public"),
    Document("bench-confidential-red", "someone-else", "red", "confidential"),
    Document("bench-locked-red", "someone-else", "red", "locked"),
    Document("bench-internal-blue", "someone-else", "blue", "internal"),
)
BENCH_ACTIONS = ("read", "edit")
# The single Check: an editor editing a document of its own team (ALLOW).
SINGLE = (BENCH_PERSON, BENCH_DOCUMENTS[0], "edit")
# The batch of 10: five documents × two actions (3 ALLOW, 7 DENY), in this order.
BATCH = tuple((BENCH_PERSON, d, a) for d in BENCH_DOCUMENTS for a in BENCH_ACTIONS)


# -- the policy, as each server is given it ----------------------------------------------------

AUTHZ_POLICY = """\
# The documents policy of the Cerbos comparison (authz.bench.documents).
name: documents
description: Team documents with owners, roles and overriding denies.
actions:
  read: Read a document
  edit: Change a document
  share: Share a document outside its team
  delete: Delete a document
  archive: Archive a document (no rule allows it)
rules:
  - id: team-members-read
    effect: allow
    actions: [read]
    resource_types: [document]
    when: >-
      principal.attributes.team == resource.attributes.team
      || resource.attributes.classification == "public"
    reason: Members of the document's team read it; anyone reads a public document
  - id: owner-edits-and-shares
    effect: allow
    actions: [edit, share]
    resource_types: [document]
    when: resource.attributes.owner == principal.id
    reason: The owner edits and shares the document
  - id: team-editors-edit
    effect: allow
    actions: [edit]
    resource_types: [document]
    when: >-
      "editor" in principal.attributes.roles
      && principal.attributes.team == resource.attributes.team
    reason: Editors of the document's team edit it
  - id: admins-manage-documents
    effect: allow
    actions: [read, edit, share, delete]
    resource_types: [document]
    when: '"admin" in principal.attributes.roles'
    reason: Admins read, edit, share and delete any document
  - id: suspended-principals-do-nothing
    effect: deny
    actions: ["*"]
    when: principal.attributes.suspended == true
    reason: A suspended principal may do nothing
  - id: locked-documents-for-admins-only
    effect: deny
    actions: ["*"]
    resource_types: [document]
    when: >-
      resource.attributes.classification == "locked"
      && !("admin" in principal.attributes.roles)
    reason: A locked document is for admins only
  - id: confidential-documents-stay-inside
    effect: deny
    actions: [share]
    resource_types: [document]
    when: resource.attributes.classification == "confidential"
    reason: A confidential document is never shared
  - id: confidential-for-owner-and-legal
    effect: deny
    actions: [read, edit]
    resource_types: [document]
    when: >-
      resource.attributes.classification == "confidential"
      && resource.attributes.owner != principal.id
      && principal.attributes.department != "legal"
    reason: Only its owner and the legal department read or edit a confidential document
"""

# Cerbos's policy format: derived roles plus a resource policy; a DENY rule overrides any ALLOW.
# https://docs.cerbos.dev/cerbos/latest/policies/derived_roles and .../resource_policies
CERBOS_DERIVED_ROLES = """\
apiVersion: api.cerbos.dev/v1
derivedRoles:
  name: document_roles
  definitions:
    - name: owner
      parentRoles: ["*"]
      condition:
        match:
          expr: R.attr.owner == P.id
    - name: team_member
      parentRoles: ["*"]
      condition:
        match:
          expr: P.attr.team == R.attr.team
    - name: team_editor
      parentRoles: [editor]
      condition:
        match:
          expr: P.attr.team == R.attr.team
"""

CERBOS_RESOURCE_POLICY = """\
apiVersion: api.cerbos.dev/v1
resourcePolicy:
  version: default
  resource: document
  importDerivedRoles: [document_roles]
  rules:
    - name: team-members-read
      actions: [read]
      effect: EFFECT_ALLOW
      derivedRoles: [team_member]
    - name: anyone-reads-public
      actions: [read]
      effect: EFFECT_ALLOW
      roles: ["*"]
      condition:
        match:
          expr: R.attr.classification == "public"
    - name: owner-edits-and-shares
      actions: [edit, share]
      effect: EFFECT_ALLOW
      derivedRoles: [owner]
    - name: team-editors-edit
      actions: [edit]
      effect: EFFECT_ALLOW
      derivedRoles: [team_editor]
    - name: admins-manage-documents
      actions: [read, edit, share, delete]
      effect: EFFECT_ALLOW
      roles: [admin]
    - name: suspended-principals-do-nothing
      actions: ["*"]
      effect: EFFECT_DENY
      roles: ["*"]
      condition:
        match:
          expr: P.attr.suspended == true
    - name: locked-documents-for-admins-only
      actions: ["*"]
      effect: EFFECT_DENY
      roles: ["*"]
      condition:
        match:
          expr: R.attr.classification == "locked" && !("admin" in P.roles)
    - name: confidential-documents-stay-inside
      actions: [share]
      effect: EFFECT_DENY
      roles: ["*"]
      condition:
        match:
          expr: R.attr.classification == "confidential"
    - name: confidential-for-owner-and-legal
      actions: [read, edit]
      effect: EFFECT_DENY
      roles: ["*"]
      condition:
        match:
          all:
            of:
              - expr: R.attr.classification == "confidential"
              - expr: R.attr.owner != P.id
              - expr: P.attr.department != "legal"
"""


def write_authz_policies(directory: Path, text: str = AUTHZ_POLICY) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "documents.yaml").write_text(text)
    return directory


def write_cerbos_policies(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "derived_roles.yaml").write_text(CERBOS_DERIVED_ROLES)
    (directory / "document.yaml").write_text(CERBOS_RESOURCE_POLICY)
    return directory


def policy_texts() -> dict[str, str]:
    """The policy as each server was given it (for docs/benchmarks.md)."""
    return {
        "authz (policies/documents.yaml)": AUTHZ_POLICY,
        "Cerbos derived roles (derived_roles.yaml)": CERBOS_DERIVED_ROLES,
        "Cerbos resource policy (document.yaml)": CERBOS_RESOURCE_POLICY,
    }
