"""Project-wide helpers below every other package: atomic file writing, distributed (FSDP2) tensor
access, batch padding and the shifted cross-entropy, and dataclass-driven command-line options."""
