"""``ledger release``: a commit as an ordinary Hub model repo commit (docs/remotes.md, "Release").

This module owns the command's arguments and its confirmation; the work is
``Ledger.release`` (ledger.remotes.release). It must
never read or write Hub bytes itself.
"""

from __future__ import annotations

import click

from ledger.cli._common import confirm, global_options, open_ledger, short


@click.command("release")
@click.argument("rev")
@click.option("--to", "to", required=True, help="The Hub model repo: hf://ORG/NAME.")
@click.option(
    "--revision",
    default="main",
    show_default=True,
    help="The Hub branch to write (created when missing).",
)
@click.option("--tag", help="Also tag the release (refused if the tag exists: tags never move).")
@click.option(
    "--public",
    is_flag=True,
    help="Create a missing repo public (default: private). Never changes an existing repo.",
)
@click.option(
    "--hf-token-name",
    metavar="TOKEN",
    help="Write with the token `hf auth login` stored under this name (default: the active one).",
)
@global_options
def release_command(
    rev: str, to: str, revision: str, tag: str | None, public: bool, hf_token_name: str | None
) -> None:
    """Write commit REV as a plain save_pretrained model (and model card) onto a Hub branch.

    Only files whose content changed are uploaded. Anyone can then load it with
    transformers' from_pretrained("ORG/NAME", revision=REVISION), no ledger needed.
    """
    r = open_ledger().release(
        rev, to, revision=revision, tag=tag, public=public, hf_token_name=hf_token_name
    )
    where = f"{r.url}@{r.revision}" + (f" (tag {r.tag})" if r.tag else "")
    seen = "private" if r.private else "public"
    sent = f"{len(r.uploaded)} files uploaded, {len(r.unchanged)} unchanged"
    if r.deleted:
        sent += f", {len(r.deleted)} deleted"
    confirm(
        r,
        f"released {short(r.commit)} to {where}, Hub commit {r.hub_commit[:12]} ({seen} repo): "
        + sent,
    )
