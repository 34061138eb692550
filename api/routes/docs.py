"""Documentation a person can browse: Swagger UI over ``/api/v1/openapi.json`` at ``/api/docs``.

Swagger UI's files come from a Python package (swagger-ui-bundle-v2) and are served by this API,
so the page needs no network beyond the API itself. The page, its files and ``/`` (which
redirects to the page) follow the token rule of every route (api/auth.py): with
FLEXDB_API_TOKEN set they need the bearer token like the document they show. The operations
carry the document's ``bearerToken`` scheme, so "Authorize" makes "Try it out" send it.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from flask import Blueprint, Response, current_app, redirect, render_template, send_file, url_for
from swagger_ui_bundle import swagger_ui_path

from api.http import services
from api.openapi import outside_the_document
from shared.core.errors import NotFound

_OWN_FILES = Path(__file__).resolve().parents[1] / "docs_ui"
_SWAGGER_UI_FILES = Path(str(swagger_ui_path))

# The only files served, each from its folder with its media type: a name is a key here, never a path.
_ASSETS: dict[str, tuple[Path, str]] = {
    "swagger-ui.css": (_SWAGGER_UI_FILES, "text/css"),
    "index.css": (_SWAGGER_UI_FILES, "text/css"),
    "swagger-ui-bundle.js": (_SWAGGER_UI_FILES, "text/javascript"),
    "favicon-32x32.png": (_SWAGGER_UI_FILES, "image/png"),
    "flexdb-docs.js": (_OWN_FILES, "text/javascript"),
}

bp = Blueprint("docs", __name__, template_folder=str(_OWN_FILES))


def _content_security_policy() -> str:
    """Scripts, styles and images from this API only (Swagger UI sets inline styles), and calls
    to this API or FLEXDB_PUBLIC_URL, the servers the document names."""
    connect = "'self'"
    public_url = urlsplit(services().settings.public_url)
    if public_url.netloc:
        connect += f" {public_url.scheme}://{public_url.netloc}"
    return (
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        f"font-src 'self'; connect-src {connect}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


@bp.get("/")
@outside_the_document
def root():
    return redirect(url_for("docs.page"))


@bp.get("/api/docs")
@outside_the_document
def page():
    info = current_app.extensions["flexdb.openapi"]["info"]
    response = Response(render_template("flexdb-api-docs.html", title=info["title"], version=info["version"]))
    response.headers["Content-Security-Policy"] = _content_security_policy()
    return response


@bp.get("/api/docs/assets/<name>")
@outside_the_document
def asset(name: str):
    if name not in _ASSETS:
        raise NotFound(f"No documentation file named {name!r}.")
    folder, media_type = _ASSETS[name]
    return send_file(folder / name, mimetype=media_type)
