"""Trust: Merkle hashing, attestations, builder transparency logs and the acceptance policy."""
