"""The built-in fallback handlers, one module each."""
