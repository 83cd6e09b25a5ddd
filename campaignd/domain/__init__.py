"""Pure, synchronous domain logic: no clock reads, no settings, no I/O."""
