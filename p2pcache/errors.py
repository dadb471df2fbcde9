"""The project's exception hierarchy.

Every error a user can meet is a subclass of `P2PCacheError` whose message is a sentence the
user can act on. The command line turns it into one line and a non-zero exit; the servers turn
it into a status code and a short body. Anything else escaping is a bug.
"""


class P2PCacheError(Exception):
    """Base class of every error p2pcache reports on purpose."""


class LookupUndecided(P2PCacheError):
    """A miss's lookup timed out, or a source could not tell whether it holds the item:
    nothing says the item is absent, so its 404 must not be cached for long."""


class FormatError(P2PCacheError, ValueError):
    """Input bytes do not follow the format they claim to be in."""


class Nix32Error(FormatError):
    """A string is not valid nix-base32."""


class StorePathError(FormatError):
    """A string is not a valid store path (or store path name)."""


class NarFormatError(FormatError):
    """A NAR stream is malformed, hostile or truncated."""


class NarinfoFormatError(FormatError):
    """A narinfo cannot be parsed the way Guix parses it."""


class SexpError(FormatError):
    """An s-expression (canonical or advanced form) is malformed or too large."""


class KeyFormatError(FormatError):
    """A Guix key file or ACL does not have the shape Guix writes and accepts."""


class SignatureError(P2PCacheError):
    """Signing failed (for example, the secret key is not usable)."""


class NarRestoreError(P2PCacheError):
    """A NAR could not be restored into its destination (for reasons other than its format)."""
