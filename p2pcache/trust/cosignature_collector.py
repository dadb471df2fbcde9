"""A builder collects its witnesses' cosignatures and attaches them to the checkpoints it serves.

A verifier that requires N witness cosignatures accepts a builder's checkpoint only with N
valid cosignature lines on it (checkpoint.verify_checkpoint). So a builder with witnesses
(`[builder] witnesses`, their peer URLs) asks each, every interval, for the newest checkpoint
of its log it cosigned (`GET /p2p/v1/witness/cosignature/<builder key>`), checks that the text
is one this builder signed and that the witness's line verifies under the witness's key
(learned from its signed `/p2p/v1/node`, the key name being `p2pcache/witness/<key>`), and
adds that line to its own stored note. From then on the checkpoint route and every own bundle
carry it. A line that did not verify is never attached: verifiers that know the witness would
reject the whole note for it (signed-note §Signatures).

A witness lags by at most its interval: a checkpoint signed since is served without its
cosignatures until the next round.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from p2pcache.errors import P2PCacheError
from p2pcache.net.peer_client import PeerClient, PeerError
from p2pcache.trust.builder_log import BuilderLog
from p2pcache.trust.checkpoint import MAX_CHECKPOINT_SIZE, parse_checkpoint
from p2pcache.trust.cosignature import CosignatureVerifier
from p2pcache.trust.log_watch_metrics import LogWatchCounters
from p2pcache.trust.signed_note import (
    MAX_NOTE_SIGNATURES,
    Note,
    NoteSignature,
    parse_note,
    render_note,
    verify_note,
)
from p2pcache.trust.witness import witness_verifier

log = logging.getLogger(__name__)


class CosignatureRefused(P2PCacheError):
    """A witness's answer cannot be attached to this builder's checkpoint."""


def witness_cosignature(witness_note: bytes, verifier: CosignatureVerifier) -> NoteSignature:
    """The witness's verified cosignature line from the note it serves.

    Raises CosignatureRefused if it carries none, NoteVerificationError if it does not verify.
    """
    note = parse_note(witness_note, max_size=MAX_CHECKPOINT_SIZE)
    for line in note.signatures:
        if (line.name, line.key_id) == (verifier.name, verifier.key_id):
            verify_note(Note(note.text, (line,)), [verifier])
            return line
    raise CosignatureRefused(f"the note carries no cosignature by {verifier.name}")


def attach_cosignature(own_note: bytes, line: NoteSignature) -> bytes:
    """`own_note` with `line` added, replacing an earlier line of the same key.

    Raises CosignatureRefused when the note has no room left (signed-note caps lines at 32).
    """
    note = parse_note(own_note, max_size=MAX_CHECKPOINT_SIZE)
    if line in note.signatures:
        return own_note
    kept = [s for s in note.signatures if (s.name, s.key_id) != (line.name, line.key_id)]
    if len(kept) >= MAX_NOTE_SIGNATURES:
        raise CosignatureRefused(f"the checkpoint already carries {len(kept)} signature lines")
    rendered = render_note(Note(note.text, (*kept, line)))
    if len(rendered) > MAX_CHECKPOINT_SIZE:
        raise CosignatureRefused("the checkpoint with this cosignature would be oversized")
    return rendered


class CosignatureCollector:
    """Pull cosignatures from this builder's witnesses, one round at a time (periodic_rounds.py)."""

    def __init__(
        self,
        builder_log: BuilderLog,
        client: PeerClient,
        witness_urls: Sequence[str],
        *,
        counters: LogWatchCounters,
    ) -> None:
        self.builder_log = builder_log
        self.client = client
        self.witness_urls = tuple(witness_urls)
        self.counters = counters
        self._verifiers: dict[str, CosignatureVerifier] = {}

    async def collect_once(self) -> dict[str, str]:
        """Ask every witness once: witness URL -> result word (attached, unchanged, ...)."""
        results = {}
        for url in self.witness_urls:
            try:
                results[url] = await self._collect(url)
            except PeerError as e:
                log.info("no cosignature from witness %s (%s); asked again later", url, e)
                results[url] = "unavailable"
            except P2PCacheError as e:
                log.warning("witness %s served a cosignature that is not attached: %s", url, e)
                results[url] = "refused"
            self.counters.cosignatures_collected[results[url]] += 1
        return results

    async def _collect(self, url: str) -> str:
        verifier = self._verifiers.get(url)
        if verifier is None:
            info = await self.client.node_info(url)
            verifier = self._verifiers[url] = witness_verifier(info.public_key)
        note = await self.client.fetch_cosigned_checkpoint(url, self.builder_log.public_key)
        if note is None:
            return "none-yet"
        line = witness_cosignature(note, verifier)
        text = parse_note(note, max_size=MAX_CHECKPOINT_SIZE).text
        size = parse_checkpoint(text).size
        return await asyncio.to_thread(self._attach, size, text, line)

    def _attach(self, size: int, text: bytes, line: NoteSignature) -> str:
        own = self.builder_log.bundles.own_checkpoint(size)
        if own is None or parse_note(own.note, max_size=MAX_CHECKPOINT_SIZE).text != text:
            raise CosignatureRefused(
                f"the witness cosigned a checkpoint of size {size} this builder never signed"
            )
        updated = attach_cosignature(own.note, line)
        if updated == own.note:
            return "unchanged"
        self.builder_log.bundles.replace_own_checkpoint_note(size, updated)
        log.info("attached the cosignature of %s to this log's checkpoint %d", line.name, size)
        return "attached"
