"""minidl.explain: the teaching tools (placeholder in this branch; the explain branch
provides the real package face)."""
