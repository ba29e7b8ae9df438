"""Trust: the PKI model, chain and revocation validation, possession proofs."""
