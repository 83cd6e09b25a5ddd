"""Event pipeline: decode → validate → dedupe → enrich → aggregate (see ``schema`` for the wire
format)."""
