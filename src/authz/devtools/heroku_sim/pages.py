"""``GET /__sim/dashboard``: the simulator's stand-in for the Heroku dashboard, in a browser.

One section per app: its add-ons, and everyone Heroku knows, each with an "Open" link per add-on
that does what Heroku's "open add-on" button does (``/__sim/sso/{addon}/{user}``: a page that
POSTs a freshly signed SSO form to the manifest's ``sso_url``). People who are not on the app are
listed too, so a refused login is one click away; a collaborator can be removed from the app with
a button (``DELETE /__sim/apps/{app}/collaborators/{user}``, which sends the ``api:collaborator``
webhook).
"""

from __future__ import annotations

from html import escape
from typing import Any
from urllib.parse import quote


def _open_links(addons: list[dict[str, Any]], user_id: str) -> str:
    links = []
    for addon in addons:
        href = f"/__sim/sso/{quote(addon['id'])}/{quote(user_id)}"
        links.append(
            f'<a class="open" href="{escape(href)}" data-addon="{escape(addon["name"])}">'
            f"Open {escape(addon['name'])}</a>"
        )
    return " ".join(links)


def dashboard_page(state: dict[str, Any], sso_url: str | None) -> str:
    """The page, from ``HerokuSimulator.state()`` and the manifest's ``sso_url``."""
    users = {u["id"]: u for u in state["users"]}
    teams = {t["id"]: t for t in state["teams"]}

    def who(user_id: str) -> str:
        u = users[user_id]
        return escape(u["handle"] or u["name"] or u["email"])

    sections = []
    for app in state["apps"]:
        addons = [a for a in state["addons"] if a["app"]["id"] == app["id"]]
        if not addons:
            continue
        rows, listed = [], set()
        for c in app["collaborators"]:
            user_id = c["user"]["id"]
            listed.add(user_id)
            permissions = "/".join(p["name"] for p in c["permissions"])
            remove = (
                f'<button class="remove" data-app="{escape(app["name"])}" '
                f'data-user="{escape(user_id)}">Remove from app</button>'
                if c["role"] != "owner"
                else ""
            )
            rows.append(
                f'<tr data-user="{who(user_id)}"><td>{who(user_id)}</td>'
                f"<td>{escape(c['role'] or '')}{': ' + escape(permissions) if permissions else ''}"
                f"</td><td>{_open_links(addons, user_id)}</td><td>{remove}</td></tr>"
            )
        team = teams.get(app["team"]["id"]) if app.get("team") else None
        for m in team["members"] if team else ():
            user_id = m["user"]["id"]
            if user_id in listed:
                continue
            listed.add(user_id)
            rows.append(
                f'<tr data-user="{who(user_id)}"><td>{who(user_id)}</td>'
                f"<td>team {escape(m['role'] or 'member')} (no app entry)</td>"
                f"<td>{_open_links(addons, user_id)}</td><td></td></tr>"
            )
        for user_id in users:
            if user_id not in listed:
                rows.append(
                    f'<tr class="outsider" data-user="{who(user_id)}"><td>{who(user_id)}</td>'
                    f"<td>not on this app</td><td>{_open_links(addons, user_id)}</td><td></td></tr>"
                )
        names = ", ".join(
            f"{escape(a['name'])} ({escape(a['plan']['name'])}, {escape(a['state'])})"
            for a in addons
        )
        sections.append(
            f'<section id="app-{escape(app["name"])}"><h2>{escape(app["name"])}</h2>'
            f"<p>Add-ons: {names}</p><table><tr><th>User</th><th>Role on the app</th>"
            f"<th>Open the add-on as this user</th><th></th></tr>{''.join(rows)}</table></section>"
        )
    target = (
        f"Open buttons POST a signed SSO form to <code>{escape(sso_url)}</code>."
        if sso_url
        else 'No sso_url in the manifest yet: PATCH /__sim/manifest {"sso_url": ...} first.'
    )
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8"><title>Heroku simulator</title>\n'
        "<style>body{font:15px/1.5 system-ui,sans-serif;margin:24px 40px;color:#1f2430}"
        "table{border-collapse:collapse}td,th{padding:4px 10px;border-bottom:1px solid #ddd;"
        "text-align:left}a.open{margin-right:8px}tr.outsider td{color:#777}</style></head>\n"
        f"<body><h1>Heroku simulator: apps and their add-ons</h1><p>{target}</p>\n"
        f"{''.join(sections)}\n"
        "<script>\n"
        "for (const b of document.querySelectorAll('button.remove')) {\n"
        "  b.addEventListener('click', async () => {\n"
        "    const url = `/__sim/apps/${encodeURIComponent(b.dataset.app)}/collaborators/`\n"
        "      + encodeURIComponent(b.dataset.user);\n"
        "    await fetch(url, {method: 'DELETE'});\n"
        "    location.reload();\n"
        "  });\n"
        "}\n"
        "</script></body></html>\n"
    )
