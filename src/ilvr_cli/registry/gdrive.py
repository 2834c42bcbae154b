"""Google Drive sources: the ``drive.usercontent.google.com/download`` endpoint and its confirm step.

Large files first answer a "can't scan this file for viruses" page whose form is submitted; a quota page,
a missing file or a page without a form is reported as such (docs/registry.md, "Google Drive caveats").
"""

from __future__ import annotations

from html.parser import HTMLParser
from urllib.parse import urlencode, urljoin

from ilvr_cli.registry.transfer import Context, HtmlPage, Part, SourceFailed, allowed_url, http_attempt

__all__ = ["gdrive_attempt"]


class _FormParser(HTMLParser):
    """Collect Drive's confirm form (``<form action>`` and its ``<input>`` fields) and any confirm link."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}
        self.confirm_href: str | None = None
        self._in_form = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        is_download_form = "download" in a.get("action", "") or a.get("id") == "download-form"
        if tag == "form" and self.action is None and is_download_form:
            self.action, self._in_form = a.get("action", ""), True
        elif tag == "input" and self._in_form and a.get("name"):
            self.fields[a["name"]] = a.get("value", "")
        elif tag == "a" and "confirm=" in a.get("href", "") and self.confirm_href is None:
            self.confirm_href = a["href"]

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._in_form = False


def _drive_confirm_url(page: HtmlPage, file_id: str) -> str:
    """The URL behind Drive's "can't scan this file for viruses" page (its form, or an older confirm link)."""
    parser = _FormParser()
    parser.feed(page.body)
    if parser.action is not None:
        fields = parser.fields or {"id": file_id, "export": "download", "confirm": "t"}
        return urljoin(page.url, parser.action) + "?" + urlencode(fields)
    if parser.confirm_href:
        return urljoin(page.url, parser.confirm_href)
    text = page.body.lower()
    if "quota" in text or "too many users" in text:
        raise SourceFailed("Google Drive refuses: the file's download quota is exceeded; try again in a day")
    if "not found" in text or "does not exist" in text or "404" in text:
        raise SourceFailed("Google Drive: no such file (removed, or not shared)", not_found=True)
    raise SourceFailed("Google Drive answered a web page without a download form (access denied?)")


def gdrive_attempt(file_id: str, part: Part, ctx: Context) -> None:
    """Drive's usercontent endpoint; large files first answer an HTML confirm page, whose form we submit."""
    if not allowed_url(ctx.options.gdrive_url, allow_local=True):
        raise SourceFailed(f"the Google Drive endpoint {ctx.options.gdrive_url} is not https")
    url = f"{ctx.options.gdrive_url}?{urlencode({'id': file_id, 'export': 'download'})}"
    try:
        http_attempt(url, part, ctx)
    except HtmlPage as page:
        confirm = _drive_confirm_url(page, file_id)
        try:
            http_attempt(confirm, part, ctx)
        except HtmlPage as again:
            _drive_confirm_url(again, file_id)  # raises the specific reason if it can tell
            raise SourceFailed("Google Drive answered a web page again after the confirm step") from None
