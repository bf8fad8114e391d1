"""Analysis tools: reconstructions, CKA, attention statistics."""
