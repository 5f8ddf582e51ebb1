"""`python -m pipeline dropbox-auth`: get the Dropbox refresh token, once, without a web server.

Dropbox no longer issues long-lived tokens. This runs the no-redirect offline flow with PKCE: it
prints the authorisation URL, you approve the app in a browser and paste the code shown, and it
prints the refresh token and the settings to put in the function app. With PKCE the app secret is
never needed (leave DROPBOX_APP_SECRET unset).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

SCOPES = ["files.content.write", "files.metadata.read"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `dropbox-auth` command."""
    parser = subparsers.add_parser(
        "dropbox-auth",
        help="authorise the Dropbox app and print DROPBOX_REFRESH_TOKEN",
        description="Run Dropbox's no-redirect OAuth flow with PKCE (offline access) and print the refresh "
        "token and settings. The app key comes from --app-key or DROPBOX_APP_KEY.",
    )
    parser.add_argument("--app-key", default=None, help="the Dropbox app key (default: DROPBOX_APP_KEY)")
    parser.add_argument("--team", action="store_true", help="also print DROPBOX_TEAM_SPACE=true")
    parser.set_defaults(func=run)


def authorize(app_key: str, read_code: Callable[[str], str], show: Callable[[str], None], *,
              session: Any = None, team: bool = False) -> str:
    """Run the flow; returns the refresh token. `session` routes the token request (tests)."""
    from dropbox import DropboxOAuth2FlowNoRedirect

    from pipeline.cli import CommandError

    flow = DropboxOAuth2FlowNoRedirect(app_key, use_pkce=True, token_access_type="offline", scope=SCOPES)
    if session is not None:
        flow.requests_session = session
    show("1. Open this URL, sign in with the Dropbox account that should receive the exports, and allow:")
    show("   " + flow.start())
    code = read_code("2. Paste the authorisation code here: ").strip()
    if not code:
        raise CommandError("no authorisation code given")
    try:
        result = flow.finish(code)
    except Exception as exc:  # requests.HTTPError and friends: one clear line, no traceback
        raise CommandError(f"Dropbox did not accept the code ({exc}); run dropbox-auth again and paste "
                           "a fresh code (codes are single-use and expire)") from None
    if not result.refresh_token:
        raise CommandError("Dropbox returned no refresh token (was offline access refused?)")
    show("3. Put these settings in the function app (Configuration) or local.settings.json:")
    show(f"   DROPBOX_APP_KEY={app_key}")
    show(f"   DROPBOX_REFRESH_TOKEN={result.refresh_token}")
    show("   DROPBOX_APP_SECRET is not needed (PKCE); leave it unset.")
    if team:
        show("   DROPBOX_TEAM_SPACE=true")
    if result.scope:
        show(f"   (granted scopes: {result.scope})")
    return str(result.refresh_token)


def run(args: argparse.Namespace) -> int:
    from pipeline import settings
    from pipeline.cli import CommandError

    app_key = args.app_key or settings.get("DROPBOX_APP_KEY")
    if not app_key:
        raise CommandError("give the app key with --app-key or DROPBOX_APP_KEY (Dropbox App Console > Settings)")
    try:
        authorize(app_key, input, print, team=args.team)
    except EOFError:
        raise CommandError("no authorisation code given (stdin closed)") from None
    return 0
